"""Concept names from a captioning model: a tiny random BLIP saved to a folder and loaded by
path through the code that loads a hub id, over a small run's top-images table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from blindspot_assets.checkpoint_versions import MissingInput, hash_directory
from blindspot_assets.config import ConfigError, LabelsSpec, RunConfig, parse_config
from blindspot_assets.labels.naming import (
    concepts_to_name,
    highlight,
    name_from_captions,
    name_run_concepts,
)
from blindspot_assets.labels.vlm import CAPTION_PROMPT, CHAT_PROMPT, load_captioner, strip_prompt
from blindspot_assets.report.data import Labels
from blindspot_assets.report.names import model_names
from blindspot_assets.sae.checkpoint import HEADER_FILE, SAE_SCHEMA
from blindspot_assets.store.tables import query, read_table, write_table_partition
from tests.conftest import REPO
from tests.labels.tiny_captioner import save_tiny_blip, save_tiny_llava
from tests.report.synthetic_run import SUPPRESSED, build_run


def test_name_from_captions() -> None:
    shared = ["a red circle", "A red circle.", "a red circle on a plain background"]
    assert name_from_captions(shared) == "red circle"
    # no caption shared by most: the words in the most captions, in their usual order
    mixed = ["red circle on stripes", "a red square", "there is a red circle", "blue sky"]
    assert name_from_captions(mixed) == "red circle"
    assert name_from_captions(["arafed image of a picture"]) == ""  # nothing but stop words
    assert name_from_captions([]) == ""
    assert len(name_from_captions(["a b c d e f g h"] * 3 + ["x"], max_words=2).split()) <= 2
    assert strip_prompt("A picture of  a red disc.", CAPTION_PROMPT) == "a red disc"


def test_highlight_crops_to_the_concept() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = 1.0  # the top-left patch (32 px) only: a margin of one patch, 3 × 3 patches
    got = np.asarray(highlight(image, heat, 1.0, 64))
    want = np.asarray(image.crop((0, 0, 96, 96)).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(got, want)
    heat[4:6, 2:8] = 0.8  # a wider region: the square around every patch ≥ half the peak
    got = np.asarray(highlight(image, heat, 1.0, 64))
    want = np.asarray(image.crop((0, 0, 256, 256)).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(got, want)
    whole = np.asarray(highlight(image, None, 0.5, 64))  # no map: the encoder's centre view
    want = np.asarray(image.crop((64, 64, 192, 192)).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(whole, want)


def test_flagged_concepts_come_first() -> None:
    top = pl.DataFrame({"concept": [0, 1, 2, 3], "rank": [1] * 4, "score": [4.0, 3.0, 9.0, 1.0]})
    flagged = pl.DataFrame({"concept": [3, 1, 3], "rank": [2, 1, 1]})
    assert concepts_to_name(top, flagged, 3) == [1, 3, 2]
    assert concepts_to_name(top, None, 10) == [2, 0, 1, 3]


def test_labels_config() -> None:
    assert not LabelsSpec().enabled
    assert LabelsSpec(model_id="Salesforce/blip-image-captioning-large").enabled
    with pytest.raises(ConfigError, match="images_per_concept must be an integer"):
        LabelsSpec(images_per_concept=0)
    # from a run config file, the error names the block too
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["labels"] = {"images_per_concept": 0}
    with pytest.raises(ConfigError, match=r"labels\.images_per_concept"):
        parse_config(raw, None)


def _with_labels(cfg: RunConfig, tmp_path: Path, **labels: object) -> Path:
    """The run's config file with a ``labels`` block (for the Dagster asset)."""
    assert cfg.source_path is not None
    raw = yaml.safe_load(cfg.source_path.read_text())
    raw["labels"] = labels
    path = tmp_path / "run-labels.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    parse_config(raw, path)  # valid
    return path


def _materialize(config_path: Path) -> dg.MaterializeResult:
    from blindspot_assets.defs.naming import concept_names
    from blindspot_assets.defs.resources import RunConfigResource

    result = dg.materialize(
        [concept_names], resources={"run_config": RunConfigResource(config_path=str(config_path))}
    )
    assert result.success
    mats = result.asset_materializations_for_node("concept_names")
    assert len(mats) == 1
    return mats[0]


def test_labeller_round_trip(tmp_path: Path) -> None:
    cfg = build_run(tmp_path, n_images=24, n_concepts=8, tables="required")
    model_dir = save_tiny_blip(tmp_path / "models" / "tiny-blip")
    spec = LabelsSpec(model_id=str(model_dir), images_per_concept=3, concepts=4, device="cpu")
    captioner = load_captioner(spec)
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    assert not captioner.chat and captioner.prompt == CAPTION_PROMPT
    assert captioner.version == hash_directory(model_dir)  # the model_checkpoints version

    names, meta = name_run_concepts(dataclasses.replace(cfg, labels=spec), captioner)
    flagged = read_table(cfg.layout.tables, "blindspots")
    first = concepts_to_name(read_table(cfg.layout.tables, "concept_top_images", "real"),
                             flagged, 4)  # fmt: skip
    assert names["concept"].to_list() == first
    assert SUPPRESSED in names["concept"].to_list()  # the planted blindspot is named
    assert (names["n_images"] == 3).all() and meta["n_images_captioned"] == 12
    assert meta["cropped_to_concept"]
    for row in names.iter_rows(named=True):
        assert len(row["captions"]) == 3
        assert row["name"] == name_from_captions(row["captions"], spec.name_words)
        assert row["model_id"] == str(model_dir) and row["prompt"] == CAPTION_PROMPT
    assert names["model_version"].unique().to_list() == [captioner.version]
    assert any(names["name"].to_list()), "the tiny model's words make names"
    # greedy decoding: the same checkpoint names the same concepts the same way
    again, _ = name_run_concepts(dataclasses.replace(cfg, labels=spec), load_captioner(spec))
    assert again["name"].to_list() == names["name"].to_list()

    # the report puts the model's name beside the caption terms
    labels = Labels({SUPPRESSED: [("red", 1.0)]}, model_names(names))
    named = dict(zip(names["concept"], names["name"], strict=True))[SUPPRESSED]
    assert labels.name(SUPPRESSED) == (f"“{named}” — red" if named else "red")


def test_chat_model_gets_the_instruction_and_answers_alone(tmp_path: Path) -> None:
    """A processor with a chat template: the prompt is an instruction in a user turn, and the
    model's echo of that turn is cut, so a caption holds the generated tokens only."""
    model_dir = save_tiny_llava(tmp_path / "tiny-llava")
    spec = LabelsSpec(model_id=str(model_dir), device="cpu", max_new_tokens=4, batch_size=2)
    captioner = load_captioner(spec)
    assert type(captioner.model).__name__ == "LlavaForConditionalGeneration"
    assert captioner.chat and captioner.prompt == CHAT_PROMPT
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    captions = captioner.caption(images)
    assert len(captions) == 3
    for caption in captions:
        assert len(caption.split()) <= 4  # the answer alone: the prompt turn is longer
        assert not caption.startswith("user")
    assert captioner.caption(images) == captions  # greedy


def test_hub_id_goes_through_the_same_loader() -> None:
    """Offline (tests), a hub id fails fast in ``from_pretrained`` naming the repo."""
    spec = LabelsSpec(model_id="Salesforce/blip-image-captioning-large", device="cpu")
    with pytest.raises(MissingInput, match="labels.model_id: Salesforce/blip-image-captioning"):
        load_captioner(spec)


def test_concept_names_asset(tmp_path: Path) -> None:
    cfg = build_run(tmp_path, n_images=24, n_concepts=8, tables="required")
    cfg.layout.sae.mkdir(parents=True)  # the synthetic run has codes but no SAE: a header
    header = {"schema": SAE_SCHEMA, "config": {"n_concepts": 8}}
    (cfg.layout.sae / HEADER_FILE).write_text(json.dumps(header))
    skipped = _materialize(_with_labels(cfg, tmp_path, model_id="none"))
    assert "labels.model_id is 'none'" in str(skipped.metadata["skipped"].value)
    assert read_table(cfg.layout.tables, "concept_names").is_empty()

    model_dir = save_tiny_blip(tmp_path / "tiny-blip")
    config = _with_labels(
        cfg, tmp_path, model_id=str(model_dir), concepts=3, images_per_concept=2, device="cpu"
    )
    done = _materialize(config)
    assert done.metadata["n_concepts"].value == 3
    table = query(
        cfg.layout.duckdb, "SELECT concept, name, model_id, model_version, sae_version "
        "FROM concept_names ORDER BY concept"
    )  # fmt: skip
    assert table.height == 3
    assert table["model_id"].unique().to_list() == [str(model_dir)]
    assert table["model_version"].unique().to_list() == [hash_directory(model_dir)]
    assert table["sae_version"].str.starts_with("sae:").all()


def test_report_shows_names_beside_terms(tmp_path: Path) -> None:
    from blindspot_assets.report import build_report

    cfg = build_run(tmp_path, n_images=24, n_concepts=8, tables="library")
    names = pl.DataFrame(
        {"concept": [SUPPRESSED], "name": ["crimson disc"], "captions": [["a crimson disc"]],
         "image_ids": [["x"]], "n_images": [1], "model_id": ["m"], "model_version": ["v"],
         "prompt": ["a picture of"], "sae_version": ["s"]}
    )  # fmt: skip
    write_table_partition(cfg.layout.tables, "concept_names", "all", names)
    build_report(cfg, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "“crimson disc” — " in page  # the name, then the caption terms

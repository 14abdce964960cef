"""Stable Diffusion family, loaded by path from tiny random pipelines through the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.registry import build_generator, validate_model
from tests.generators.helpers import (
    assert_captions_condition,
    assert_reproducible,
    pixels,
    two_requests,
)
from tests.tiny_models import save_tiny_sd, save_tiny_sd_unet

SMALL = {"height": 32, "width": 32, "steps": 2, "batch_size": 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {
        "sd15": save_tiny_sd(root / "sd15"),
        "sd21": save_tiny_sd(root / "sd21", v_prediction=True),
        "dpo": save_tiny_sd_unet(root / "dpo"),
    }


@pytest.mark.parametrize(("which", "negative"), [("sd15", None), ("sd21", "blurry, low quality")])
def test_generates_two_images_reproducibly(
    models: dict[str, Path], which: str, negative: str | None
) -> None:
    params = {"repo": str(models[which]), "negative_prompt": negative, **SMALL}
    spec = ModelSpec(which, "stable_diffusion", params)
    validate_model(spec)
    gen = build_generator(spec, device="cpu")
    assert_reproducible(gen, which, (32, 32))
    assert_captions_condition(gen, negative)

    lineage = gen.lineage()
    assert lineage["pipeline_class"] == "StableDiffusionPipeline"
    assert lineage["scheduler_class"] == "DDIMScheduler"
    assert lineage["steps"] == 2 and lineage["guidance"] == 7.5  # the pipeline's default
    assert lineage["version"].startswith("sha256:")
    assert lineage["checkpoints"][0]["source"] == "local"
    assert lineage["dtype"] == "float32" and lineage["device"] == "cpu"
    assert lineage["prediction_type"] == ("v_prediction" if which == "sd21" else "epsilon")
    assert lineage["negative_prompt"] == negative


def test_dpo_unet_swap_and_scheduler_override(models: dict[str, Path]) -> None:
    base = {"repo": str(models["sd15"]), **SMALL}
    spec = ModelSpec(
        "sd15-dpo",
        "stable_diffusion",
        {**base, "unet": {"repo": str(models["dpo"])}, "scheduler": "EulerDiscreteScheduler"},
    )
    gen = build_generator(spec, device="cpu")
    plain = build_generator(ModelSpec("sd15-dpo", "stable_diffusion", base), device="cpu")
    reqs = two_requests("sd15-dpo")[:1]
    assert not np.array_equal(pixels(gen.generate(reqs)[0]), pixels(plain.generate(reqs)[0]))
    lineage = gen.lineage()
    assert lineage["scheduler_class"] == "EulerDiscreteScheduler"
    assert [c["subfolder"] for c in lineage["checkpoints"]] == [None, "unet"]
    assert lineage["version"].startswith("combined:")
    assert lineage["version"] != plain.lineage()["version"]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"repo": "/nowhere/sd15"}, ["models.m.repo", "does not exist", "fix:"]),
        ({"repo": "org/model", "dtype": "float8"}, ["models.m.dtype", "float16"]),
        (
            {"repo": "org/model", "scheduler": "FastScheduler"},
            ["models.m.scheduler", "DDIMScheduler"],
        ),
        ({"repo": "org/model", "stepz": 3}, ["models.m.stepz", "steps"]),
        ({"repo": "org/model", "height": 500}, ["models.m.height", "multiple of 8"]),
        (
            {"repo": "org/model", "unet": {"repo": "./no/unet"}},
            ["models.m.unet.repo", "does not exist"],
        ),
        ({}, ["models.m.repo", "hub id"]),
    ],
)
def test_bad_entries_name_the_field_and_the_fix(
    params: dict[str, object], names: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        validate_model(ModelSpec("m", "stable_diffusion", params))
    for text in names:
        assert text in str(err.value)


def test_unknown_family_is_named() -> None:
    with pytest.raises(ConfigError, match="models.m.family 'sdxl' is unknown"):
        validate_model(ModelSpec("m", "sdxl", {"repo": "org/model"}))


def test_runner_regenerates_a_lost_image_identically(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Through the lead's resumable runner: one image re-made alone equals the one made in a
    batch, because its seed comes from (model key, image id) and its noise from its own
    generator."""
    import polars as pl

    from blindspot_assets.generators.runner import generate_image_set

    spec = ModelSpec("sd15", "stable_diffusion", {"repo": str(models["sd15"]), **SMALL})
    gen = build_generator(spec, device="cpu")
    real = pl.DataFrame(
        {
            "image_id": ["r1", "r2", "r3"],
            "path": ["", "", ""],
            "caption": ["a boat", "a red car", "a tree in snow"],
            "status": ["ok"] * 3,
            "detail": [""] * 3,
        }
    )
    out = tmp_path / "gen"
    first, _ = generate_image_set(gen, "sd15", real, out, batch_size=3)
    before = pixels(Image.open(out / "r2.png"))
    (out / "r2.png").unlink()
    manifest, summary = generate_image_set(gen, "sd15", real, out, batch_size=3)
    assert summary.n_generated == 1 and summary.n_reused == 2
    assert np.array_equal(pixels(Image.open(out / "r2.png")), before)
    # the prompt that reached the pipeline, per image: in the manifest and the PNG itself,
    # also for the images kept from the first run
    for df in (first, manifest):
        assert df["prompt"].to_list() == real["caption"].to_list()
        assert df["negative_prompt"].to_list() == [None] * 3
    with Image.open(out / "r3.png") as kept:
        assert kept.info["prompt"] == "a tree in snow"
    # a second image per caption: sample 0 kept, sample 1 its own seed, so other pixels
    two, again = generate_image_set(gen, "sd15", real, out, batch_size=3, images_per_caption=2)
    assert again.n_reused == 3 and again.n_generated == 3
    assert np.array_equal(pixels(Image.open(out / "r2.png")), before)
    assert not np.array_equal(pixels(Image.open(out / "r2~s1.png")), before)
    assert two["prompt"].to_list() == real["caption"].to_list() * 2

"""Confirming flagged blindspots on the demo world: planted ones come out confirmed; a flag on a
concept with no real effect (forced on a faithful model) does not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

from blindspot_assets.config import ConfigError, RunConfig, parse_config
from blindspot_assets.encoders.dinov2 import DinoEncoder, extract_features, load_encoder
from blindspot_assets.encoders.images import policy_of_run
from blindspot_assets.generators.base import derive_seed
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sae import encode_features_to_codes, train_sae
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.sources.demo import fetch
from blindspot_assets.stats import (
    compute_concept_stats,
    flag_blindspots,
    label_concepts,
)
from blindspot_assets.stats import verification as v
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.top_images import top_images
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict


@dataclass
class World:
    cfg: RunConfig
    real: pl.DataFrame
    encoder: DinoEncoder
    sae: RelaxedArchetypalSAE
    blindspots: pl.DataFrame  # demo-a's
    top: pl.DataFrame
    labels: pl.DataFrame


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """demo-a (cannot draw red, over-draws stripes) and a faithful demo model, 160 scenes."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("verify")
    raw = demo_config_dict(tmp, n_images=160)
    raw["models"] = {"demo-a": raw["models"]["demo-a"], "faithful": {"family": "demo"}}  # type: ignore[index]
    cfg = parse_config(raw)
    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    encoder = load_encoder(cfg.encoder, policy_of_run(cfg.images, cfg.layout.real_images))
    extract_features(encoder, real, cfg.layout.real_images, cfg.layout.features(REAL))
    out = cfg.layout.generated_images("demo-a")
    gen, _ = generate_image_set(build_generator(cfg.model("demo-a")), "demo-a", real, out)
    extract_features(encoder, gen, out, cfg.layout.features("demo-a"))
    d = int(RowStore.open(cfg.layout.features(REAL)).array("tokens").shape[2])
    sae = train_sae(
        [cfg.layout.features(REAL)],
        cfg.sae.model.sized(d),
        cfg.sae.train,
    ).model.eval()
    for dataset in (REAL, "demo-a"):
        encode_features_to_codes(
            sae, cfg.layout.features(dataset), cfg.layout.codes(dataset), cfg.sae.k_max_store
        )
    params = cfg.stats.params
    stats = compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes("demo-a"), params)
    top = pl.concat(
        [
            top_images(cfg.layout.codes(ds), 20).with_columns(dataset=pl.lit(ds))
            for ds in (REAL, "demo-a")
        ]
    )
    labels = label_concepts(cfg.layout.codes(REAL), real, cfg.stats.label_terms)
    return World(cfg, real, encoder, sae, flag_blindspots(stats, params), top, labels)


def verify(
    w: World, model_key: str, flagged: pl.DataFrame, params: v.VerificationParams
) -> v.VerificationRun:
    cfg = w.cfg
    return v.run_verification(
        model_key=model_key,
        blindspots=flagged,
        top_images=w.top,
        labels=w.labels,
        real_manifest=w.real,
        real_codes=cfg.layout.codes(REAL),
        generator=build_generator(cfg.model(model_key)),
        encoder=w.encoder,
        sae=w.sae,
        k_max=cfg.sae.k_max_store,
        image_dir=cfg.layout.verification_images(model_key),
        features_path=cfg.layout.verification_store(model_key, "features"),
        codes_path=cfg.layout.verification_store(model_key, "codes"),
        params=params,
    )


def forced(concepts: list[int], kind: str) -> pl.DataFrame:
    """Rows shaped like `blindspots`, flagging ``concepts`` whatever the data say."""
    n = len(concepts)
    return pl.DataFrame(
        {"concept": concepts, "kind": [kind] * n, "rank": list(range(1, n + 1)),
         "significant": [True] * n}
    )  # fmt: skip


def test_planted_blindspots_are_confirmed_with_new_seeds(world: World) -> None:
    params = v.VerificationParams.from_spec(world.cfg.stats)
    run = verify(world, "demo-a", world.blindspots, params)
    table = run.table
    assert table.height == 6 and run.n_requested <= params.max_generations
    assert table["status"].to_list() == ["confirmed"] * 6, table
    suppressed = table.filter(pl.col("kind") == "suppressed")
    # the captions were chosen by caption term, not by the real images' ξ; red is the plant
    assert suppressed["captions_from"].str.starts_with("term:").all()
    assert suppressed["captions_from"].str.contains("red").any()
    assert (suppressed["n_captions"] == params.captions).all()
    assert (suppressed["n_images"] == params.captions * params.images).all()
    assert (suppressed["relative"] < -0.5).all() and (suppressed["q_value"] < 0.05).all()
    assert (suppressed["delta_energy_ci_high"] < 0).all()
    # exaggerated: the captions of the model's own top images, the energy up again
    exaggerated = table.filter(pl.col("kind") == "exaggerated")
    assert exaggerated["captions_from"].to_list() == ["demo-a"] * 3
    assert (exaggerated["delta_energy"] > 0).all()

    # the new images: seeds from (model, image id, replicate), reproducible, never the original's
    manifest = read_manifest(world.cfg.layout.verification_images("demo-a"))
    some = manifest.filter(pl.col("image_id").str.ends_with(".verify1")).row(0, named=True)
    real_id = some["image_id"].removesuffix(".verify1")
    assert some["seed"] == derive_seed("demo-a", v.replicate_id(real_id, 1))
    assert some["seed"] != derive_seed("demo-a", real_id)
    assert manifest["seed"].n_unique() == manifest.height
    again = verify(world, "demo-a", world.blindspots, params)  # resumes: nothing regenerated
    assert again.n_generated == 0
    assert_frame_equal(again.table, table)


def test_a_flag_without_a_real_effect_is_not_confirmed(world: World) -> None:
    """The faithful model draws red: demo-a's red concept, flagged on it by chance (forced
    here), must not be confirmed — in either direction."""
    red = int(world.blindspots.filter(pl.col("kind") == "suppressed").sort("rank")["concept"][0])
    params = v.VerificationParams.from_spec(world.cfg.stats)
    for kind in ("suppressed", "exaggerated"):
        row = verify(world, "faithful", forced([red], kind), params).table.row(0, named=True)
        assert row["status"] == "not_confirmed", row
        assert abs(row["relative"]) < 0.25 and row["q_value_refute"] < 0.05, row


def test_false_confirmations_on_a_faithful_model_are_rare(world: World) -> None:
    """Every concept forced flagged both ways on the faithful model: a null for all of them
    (measured: 1 of 128 suppressed and 0 of 128 exaggerated confirmed; 106 of 128 suppressed
    when the captions came from the top real images, hence the term-based choice)."""
    concepts = list(range(world.sae.n_concepts))
    flagged = pl.concat([forced(concepts, "suppressed"), forced(concepts, "exaggerated")])
    params = v.VerificationParams(top=len(concepts), verdict=BlindspotParams(n_bootstrap=100))
    table = verify(world, "faithful", flagged, params).table
    counts = dict(table.group_by("status").len().iter_rows())
    assert counts.get("confirmed", 0) <= 0.05 * table.height, counts
    assert counts.get("not_confirmed", 0) >= 0.7 * table.height, counts


def test_too_few_captions_is_inconclusive(world: World) -> None:
    small = v.VerificationParams(1, 2, 2, BlindspotParams(n_bootstrap=50))
    run = verify(world, "demo-a", world.blindspots, small)
    table = run.table
    assert table["status"].to_list() == ["inconclusive"] * 2
    assert table["reason"].str.contains("fewer than 4").all()
    # the budget, counted: one concept of each kind, two captions, two images each
    # (test_verification_verdicts.py counts it on the largest plan)
    assert run.n_requested <= small.max_generations == 8


def test_skipped_rows_and_config_fields(tmp_path: Path) -> None:
    concepts = forced([3, 5], "suppressed").select("concept", "kind", "rank")
    rows = v.skipped_rows(concepts, "pre-generated set: no generator to prompt again")
    assert rows["status"].to_list() == ["skipped"] * 2
    assert rows["concept"].to_list() == [3, 5]
    none = v.skipped_rows(concepts[:0], "null control")
    assert none.height == 1 and none["concept"].to_list() == [None]
    raw = demo_config_dict(tmp_path, stats={"verify_images": 0})
    with pytest.raises(ConfigError, match="stats.verify_images"):
        parse_config(raw)

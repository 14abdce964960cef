"""Verdicts on a world shaped like a real run, through the CLI: real JPEGs (q90, 256 px, 4:2:0)
of 800 captioned scenes, PNG models beside them, a global style shared by
the real models, a rare colour (5 % of scenes) that one model cannot draw, 256 concepts, the
tiny random DINOv2-with-registers at 224 px (``tests/worlds``).

Measured on the code before matched histories, the probe, the consensus test and the rank by
``change_lcb`` (commit f7639c5), or with its image policy (``history: none``, the common q75
pass alone) on this very world: the perfect PNG model was flagged on 40 significant concepts
(0 here under the default); the rare colour's concepts ranked 22nd and later by |d_z| (2nd
here), nothing said which flags were the model's own, and ``control-copy`` stayed clean under
every policy, ``as_stored`` included: no control could fail (the probe's history arm flags 35
concepts under ``history: none``, 0 under the default).

The encoder's patches are 8 px, one JPEG block each (the 256-px images are cropped to 224 at an
offset of 16 px, so patch and block grids coincide): the hardest case for the codec asymmetry.
With DINOv2's own 14-px patches, or 16-px ones, the perfect model is flagged on 0 concepts even
under ``history: none`` (measured on this world, 2026-12-08), so this world could not tell the
policies apart there; it stays at 8 px.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from blindspot_assets.config import load_config
from blindspot_assets.defs.features import run_encoder
from blindspot_assets.quality import PROBE, controls_outcome
from blindspot_assets.stats.run_tables import nuisance_effects
from blindspot_assets.store.tables import write_table_partition
from tests.worlds import photo_world as world

pytestmark = pytest.mark.slow

MODELS = {
    # each caption's own photo drawn again and stored as PNG: a perfect model, a null control
    "exact": {"control": True, "same_layout": True},
    "styled": {"style": True},  # the global style every real model shares
    "styled_rare_gone": {"style": True, "suppress": [world.RARE_COLOR]},
}


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photo-world")
    # the verification step and the rest of the graph are tested elsewhere: kept short here
    overrides = {"stats": {"verify_top": 0, "probe_images": 300}}
    config = world.build(
        root,
        n_pairs=800,
        size=256,
        real_quality=90,
        models=MODELS,
        overrides=overrides,
        encoder_size=224,
    )
    world.run_world(config, root / "home")
    return config


def test_a_perfect_png_model_beside_real_jpegs_is_not_flagged(photo_run: Path):
    counts = {r["model_key"]: r for r in world.flag_counts(photo_run).iter_rows(named=True)}
    assert counts["exact"]["significant"] <= 2, counts["exact"]
    assert counts[world.CONTROL_COPY]["significant"] == 0
    outcome = controls_outcome(load_config(photo_run))
    assert outcome.passed, outcome.description
    assert outcome.metadata["flags_per_control"][PROBE]["significant"] == 0


def test_the_rare_colour_is_top_ranked_and_specific_to_the_model_that_lost_it(photo_run: Path):
    rare = world.rare_concepts(photo_run).filter(pl.col("is_rare"))["concept"].to_list()
    assert rare, "the SAE has no concept of the rare colour"
    flags = world.results(
        photo_run,
        "SELECT model_key, concept, kind, rank, significant, specific, change_lcb, "
        "row_number() OVER (PARTITION BY model_key, kind ORDER BY rank) AS kind_rank "
        "FROM blindspots WHERE significant",
    )
    gone = flags.filter(pl.col("model_key") == "styled_rare_gone")
    top = gone.filter((pl.col("kind") == "suppressed") & (pl.col("kind_rank") <= 3))
    assert set(top["concept"].to_list()) & set(rare), (rare, top)
    found = gone.filter(pl.col("concept").is_in(rare) & (pl.col("kind") == "suppressed"))
    assert found["specific"].any(), found
    # what the styled model (which shares the style) also loses is shown as shared, not as
    # this model's own: none of the top flags it shares is `specific`
    styled = flags.filter((pl.col("model_key") == "styled") & (pl.col("kind") == "suppressed"))
    shared_top = top.filter(pl.col("concept").is_in(styled["concept"].to_list()))
    assert not shared_top["specific"].fill_null(False).any(), shared_top


def test_the_probe_fails_the_controls_under_a_policy_that_leaves_the_asymmetry(
    photo_run: Path,
):
    """The same world and SAE, the probe run again with ``codec: as_stored`` (real JPEG
    against generated PNG as they lie on disk): its history arm flags concepts and
    ``controls_clean`` fails; the ``control`` family, which carries each real file's history,
    would have stayed clean."""
    cfg = load_config(photo_run)
    asymmetric = dataclasses.replace(cfg, images=dataclasses.replace(cfg.images, codec="as_stored"))
    effects = nuisance_effects(asymmetric, run_encoder(asymmetric))
    history = effects.filter(pl.col("nuisance") == "history")
    assert int(history["significant"].sum()) > 2, history.sort("q_value").head()
    write_table_partition(cfg.layout.tables, "nuisance_effects", "all", effects)
    outcome = controls_outcome(cfg)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert PROBE in outcome.description

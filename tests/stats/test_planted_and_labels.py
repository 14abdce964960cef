"""End to end on a demo-like world: planted blindspots are flagged, named and scored."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from blindspot_assets.stats import (
    BlindspotParams,
    compute_concept_stats,
    flag_blindspots,
    label_concepts,
    score_planted,
    top_images_per_concept,
    top_label,
)
from blindspot_assets.stats.labels import caption_terms
from blindspot_assets.stats.planted import attribute_values, planted_summary_frame
from tests.stats.conftest import write_codes
from tests.stats.synthetic import BACKGROUNDS, SceneCodes, scene_codes

PARAMS = BlindspotParams(n_bootstrap=200, n_permutations=200, block_rows=128)
PLANTED = {"suppressed": ["red"], "exaggerated": ["striped"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[SceneCodes, Path, Path, pl.DataFrame]:
    tmp = tmp_path_factory.mktemp("scenes")
    w = scene_codes()
    real = write_codes(tmp / "real.zarr", w.image_ids, w.xi_real_nc, chunk_rows=32)
    gen = write_codes(tmp / "gen.zarr", w.image_ids, w.xi_gen_nc, chunk_rows=32)
    manifest = pl.DataFrame(
        {"image_id": w.image_ids, "caption": w.captions, "attributes": w.attributes,
         "status": ["ok"] * len(w.image_ids)}
    )  # fmt: skip
    return w, real, gen, manifest


def test_planted_blindspots_are_recalled_at_the_top(world) -> None:  # type: ignore[no-untyped-def]
    w, real, gen, manifest = world
    flagged = flag_blindspots(compute_concept_stats(real, gen, PARAMS), PARAMS)
    top = top_images_per_concept(real, k=20)
    summary, per_concept = score_planted(flagged, top, manifest, PLANTED)
    assert summary["recall"] == 1.0 and summary["n_plants"] == 2
    assert summary["found"] == {"suppressed:red": True, "exaggerated:striped": True}
    # the other backgrounds are suppressed too (the model only paints stripes): flagged but
    # not planted, so precision@k is what it is; the two plants rank in the top 5
    assert max(summary["first_rank"].values()) <= 5
    assert summary["precision_at"][1] == 1.0
    red = per_concept.filter(concept=w.concept_of["red"]).row(0, named=True)
    assert red["planted_match"] == "red" and red["best_purity"] == 1.0
    frame = planted_summary_frame(summary, model="m")
    assert frame.filter(metric="recall")["value"].to_list() == [1.0]


def test_a_plant_nothing_matches_is_not_found(world) -> None:  # type: ignore[no-untyped-def]
    w, real, gen, manifest = world
    flagged = flag_blindspots(compute_concept_stats(real, gen, PARAMS), PARAMS)
    top = top_images_per_concept(real, k=20)
    summary, _ = score_planted(flagged, top, manifest, {"exaggerated": ["red", "plain"]})
    assert summary["found"] == {"exaggerated:red": False, "exaggerated:plain": False}
    assert summary["recall"] == 0.0 and summary["precision_at"][5] == 0.0


def test_planted_concepts_get_the_planted_word_as_their_label(world) -> None:  # type: ignore[no-untyped-def]
    w, real, _, manifest = world
    labels = label_concepts(real, manifest, top_terms=3)
    names = dict(top_label(labels).iter_rows())
    for word in ("red", "green", "circle", *BACKGROUNDS):
        assert names[w.concept_of[word]] == word, labels.filter(concept=w.concept_of[word])
    best = labels.filter((pl.col("concept") == w.concept_of["red"]) & (pl.col("rank") == 1))
    assert best["score"][0] > 0.8 and best["lift"][0] > 2.0
    noise = labels.filter(pl.col("concept") >= len(w.concept_of))
    assert noise.is_empty() or noise["score"].max() < 0.4  # type: ignore[operator]


def test_caption_terms_and_attribute_values() -> None:
    assert caption_terms("Two red circles on a striped background") == {
        "two", "red", "circles", "striped", "background", "two red", "red circles",
        "striped background",
    }  # fmt: skip
    assert attribute_values('{"colors": ["red"], "background": "striped", "count": 2}') == {
        "red", "striped", "2",
    }  # fmt: skip
    assert attribute_values(None) == set()

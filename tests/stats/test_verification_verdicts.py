"""The verification verdict (``verify_concepts``) on small tables, without a world: its p-values,
BH q-values and refutation test against scipy (``tests/stats/independent.py``), and the status
each gives.

Regressions (issue 29): BH dropped for the verification q-values, and the refutation's direction
swapped between suppressed and exaggerated, passed every test before."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from blindspot_assets.stats import verification as v
from blindspot_assets.stats.params import BlindspotParams
from tests.stats import independent as ind

PARAMS = v.VerificationParams(verdict=BlindspotParams(n_bootstrap=20))
RHO = ind.rho_of(PARAMS.verdict.min_relative)


def _tables(
    kinds: list[str], r: np.ndarray, g: np.ndarray
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The plan, real energies and new-image energies of concepts ``kinds`` (one each): ``r``
    (captions × concepts) the real images' ξ, ``g`` (captions × images × concepts) the new
    images'."""
    n, images, c = g.shape
    ids = [f"img{i:04d}" for i in range(n)]
    plan = pl.DataFrame(
        {
            "concept": np.repeat(np.arange(c), n).astype(np.int32),
            "kind": np.repeat(kinds, n),
            "flag_rank": np.repeat(np.arange(1, c + 1), n).astype(np.int32),
            "captions_from": "term:thing",
            "image_id": ids * c,
            "caption": "a thing",
        }
    )
    real = pl.DataFrame(
        {"image_id": ids * c, "concept": np.repeat(np.arange(c), n), "xi": r.T.ravel()}
    )
    gen = pl.DataFrame(
        {
            "real_image_id": np.repeat(ids, images * c),
            "concept": np.tile(np.arange(c), n * images),
            "xi": g.ravel(),
        }
    )
    return plan, real, gen


def _world(seed: int, ratios: np.ndarray, n: int = 30, images: int = 3):
    """Real ξ per caption and new images' ξ at ``ratios`` × the real energy, noisy."""
    rng = np.random.default_rng(seed)
    c = ratios.size
    r = rng.gamma(6.0, 1.0, size=(n, c))
    g = ratios * r[:, None, :] + rng.normal(0.0, 3.0, size=(n, images, c))
    # float32, as the codes store them
    return r.astype(np.float32).astype(np.float64), np.clip(g, 0.0, None).astype(np.float32)


@pytest.mark.parametrize("kind", ["suppressed", "exaggerated"])
def test_p_q_and_refutation_match_the_written_out_tests(kind: str) -> None:
    ratios = np.array([0.4, 0.55, 0.62, 0.7, 1.0, 1.3, 1.5, 1.65, 1.8, 2.5])  # ρ = 0.6
    r, g = _world(0, ratios, n=12)
    table = v.verify_concepts(*_tables([kind] * ratios.size, r, g), PARAMS).sort("concept")
    gm = g.astype(np.float64).mean(axis=1)  # G_i: the mean over a caption's new images
    p = ind.p_minimum_effect(r, gm, PARAMS.verdict.min_effect_size, PARAMS.verdict.min_relative)
    # refuted: the energy ratio is not beyond ρ in the flagged direction
    refute = ind.p_below(RHO * r - gm) if kind == "suppressed" else ind.p_below(RHO * gm - r)
    q, q_refute = ind.bh(p), ind.bh(refute)
    # BH moves q-values that are not lost in float rounding (atol)
    assert ((q > p) & (p > 1e-6)).sum() >= 2 and ((q_refute > refute) & (refute > 1e-6)).sum() >= 2
    for column, expected in (
        ("p_value", p), ("q_value", q), ("p_value_refute", refute), ("q_value_refute", q_refute)
    ):  # fmt: skip
        np.testing.assert_allclose(table[column].to_numpy(), expected, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(table["delta_energy"].to_numpy(), (gm - r).mean(axis=0), rtol=1e-6)


def test_a_flag_beyond_the_margin_in_its_direction_is_never_refuted() -> None:
    """Suppressed flags whose new images keep about half the energy (E_G ≈ 0.5 E_R, beyond
    ρ = 0.6 but not far enough to be shown on 30 captions), and exaggerated flags at twice the
    energy: not refuted, whatever else they are; ones that came back unchanged are."""
    ratios = np.array([0.5, 0.5, 0.55, 2.0, 2.0, 1.0, 1.0])
    kinds = ["suppressed"] * 3 + ["exaggerated"] * 2 + ["suppressed", "exaggerated"]
    r, g = _world(1, ratios)
    table = v.verify_concepts(*_tables(kinds, r, g), PARAMS).sort("concept")
    beyond, back = table.head(5), table.tail(2)
    assert (beyond["p_value_refute"] > 0.2).all(), beyond
    assert (beyond["status"] != "not_confirmed").all(), beyond
    assert back["status"].to_list() == ["not_confirmed"] * 2, back
    assert back["reason"].str.contains("within").all()


def test_the_generation_budget_holds_the_largest_plan() -> None:
    """``max_generations`` is what a plan of ``top`` concepts of both kinds, each with
    ``captions`` captions of its own, requests: counted from the requests made."""
    params = v.VerificationParams(top=3, images=4, captions=8)
    rows = [
        {"concept": k, "image_id": f"k{k}-c{i}", "caption": f"caption {k} {i}"}
        for k in range(2 * params.top)
        for i in range(params.captions)
    ]
    requests = v.replicate_manifest(pl.DataFrame(rows), params.images)
    assert requests.height == params.max_generations == 192
    assert requests["image_id"].n_unique() == requests.height


def test_the_columns_of_a_small_table_worked_by_hand() -> None:
    """Four captions, two new images each: energies, Δ, relative, d_z and the interval of
    a concept that changes, of one that never fires, and of one that loses exactly 1 on
    every caption (d_z infinite, a point interval)."""
    r = np.array([[2.0, 0.0, 3.0], [4.0, 0.0, 5.0], [6.0, 0.0, 2.0], [8.0, 0.0, 4.0]])
    g = np.stack([r * [0.5, 0, 1] + [0, 0, -1] + 0.5, r * [0.5, 0, 1] + [0, 0, -1] - 0.5], axis=1)
    g[0, :, 0] = [0.0, 3.0]  # caption 0: G = 1.5, d = -0.5
    table = v.verify_concepts(*_tables(["suppressed", "exaggerated", "suppressed"], r, g), PARAMS)
    d0 = np.array([-0.5, -2.0, -3.0, -4.0])
    assert table["n_captions"].to_list() == [4, 4, 4] and table["n_images"].to_list() == [8] * 3
    np.testing.assert_allclose(table["energy_real"], [5.0, 0.0, 3.5])
    np.testing.assert_allclose(table["energy_gen"], [5.0 + d0.mean(), 0.0, 2.5])
    np.testing.assert_allclose(table["delta_energy"], [d0.mean(), 0.0, -1.0])
    np.testing.assert_allclose(table["relative"], [d0.mean() / (10 + d0.mean()), 0.0, -1 / 6])
    np.testing.assert_allclose(table["effect_size"][:2], [d0.mean() / d0.std(ddof=1), 0.0])
    assert table["effect_size"][2] == -np.inf
    low, high = table["delta_energy_ci_low"].to_list(), table["delta_energy_ci_high"].to_list()
    assert d0.min() <= low[0] < d0.mean() < high[0] <= d0.max()
    assert (low[1:], high[1:]) == ([0.0, -1.0], [0.0, -1.0])
    assert table["status"][1] == "inconclusive"
    assert table["reason"][1] == "neither confirmed nor refuted at α = 0.05 on 4 captions"
    assert (table["p_value"][1], table["p_value_refute"][1]) == (1.0, 1.0)


def test_too_few_captions_are_not_tested_nor_counted_in_bh() -> None:
    r, g = _world(2, np.array([0.2, 0.2]), n=12)
    plan, real, gen = _tables(["suppressed", "suppressed"], r, g)
    few = plan.filter((pl.col("concept") == 0) | (pl.col("image_id") < "img0003"))
    table = v.verify_concepts(few, real, gen, PARAMS).sort("concept")
    assert table["n_captions"].to_list() == [12, 3]
    assert table["status"].to_list() == ["confirmed", "inconclusive"]
    assert table["reason"].to_list() == [
        "suppressed again in the new images (q < 0.05)",
        "3 usable caption(s), fewer than 4",
    ]
    assert table["q_value"][0] == table["p_value"][0] and table["q_value"].is_nan()[1]
    # no caption at all: kept, inconclusive, its energies NaN and its relative 0
    none = few.filter(pl.col("concept") == 0).with_columns(image_id=pl.lit(None, pl.String))
    (row,) = v.verify_concepts(none, real, gen, PARAMS).iter_rows(named=True)
    assert (row["n_captions"], row["n_images"], row["relative"]) == (0, 0, 0.0)
    assert np.isnan(row["energy_real"]) and row["status"] == "inconclusive"


def test_replicate_requests_and_the_concepts_to_verify() -> None:
    plan = pl.DataFrame(
        {"image_id": ["b", "a", "b", None], "caption": ["cb", "ca", "cb", None]},
        schema={"image_id": pl.String, "caption": pl.String},
    )
    requests = v.replicate_manifest(plan, 2)
    assert requests.rows() == [
        ("b.verify0", "cb", "ok", "b", 0), ("b.verify1", "cb", "ok", "b", 1),
        ("a.verify0", "ca", "ok", "a", 0), ("a.verify1", "ca", "ok", "a", 1),
    ]  # fmt: skip
    schema = {"image_id": pl.String, "caption": pl.String, "status": pl.String,
              "real_image_id": pl.String, "replicate": pl.Int32}  # fmt: skip
    assert requests.schema == schema and v.replicate_manifest(plan[3:], 2).schema == schema
    blindspots = pl.DataFrame(
        {
            "concept": [5, 6, 7, 8, 9, 10],
            "kind": ["suppressed", "exaggerated", "suppressed", "suppressed", "exaggerated", "x"],
            "rank": [4, 2, 1, 3, 5, 6],
            "significant": [True, True, True, False, True, False],
        }
    )
    picked = v.concepts_to_verify(blindspots, 1)
    assert picked.rows() == [(7, "suppressed", 1), (6, "exaggerated", 2)]
    assert picked.schema == {"concept": pl.Int32, "kind": pl.String, "rank": pl.Int32}
    assert v.concepts_to_verify(blindspots, 2)["concept"].to_list() == [7, 5, 6, 9]  # by kind
    for none in (v.concepts_to_verify(blindspots, 0), v.concepts_to_verify(blindspots[:0], 3)):
        assert none.height == 0 and none.columns == ["concept", "kind", "rank"]

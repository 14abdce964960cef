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

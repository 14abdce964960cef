"""The one ``significant``: a minimum-effect test of "the change is negligible", then
Benjamini–Hochberg. Checked on paired data through ``compute_concept_stats``, where the
verdict is made: its false-discovery rate over many seeds, its calibration at the margin, and
that a rare concept that is gone is caught while a tiny shift is not.

Regression (issue "Tests that fail when the feature breaks", point 1): writing
``q_value = p_value`` in ``stats/concepts.py`` passed every test before; the FDR test below
fails on it, because without the correction the realised false-discovery proportion of boundary
nulls is far above α.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from blindspot_assets.stats import BlindspotParams, compute_concept_stats, flag_blindspots
from blindspot_assets.stats.significance import PairedMoments, minimum_effect_p_values
from tests.stats.conftest import write_codes

PARAMS = BlindspotParams(n_bootstrap=0, n_permutations=0, block_rows=4096)


def _stats(tmp: Path, real_nc: np.ndarray, gen_nc: np.ndarray, params: BlindspotParams = PARAMS):
    ids = [f"i{i:06d}" for i in range(real_nc.shape[0])]
    real = write_codes(tmp / "real.zarr", ids, real_nc.astype(np.float32), chunk_rows=4096)
    gen = write_codes(tmp / "gen.zarr", ids, gen_nc.astype(np.float32), chunk_rows=4096)
    return compute_concept_stats(real, gen, params)


def _boundary_world(
    rng: np.random.Generator, n: int, n_null: int, n_planted: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nulls exactly at the effect-size margin (d_z = 0.1, relative ≈ 0: the hardest nulls, a
    change that is just negligible) and planted concepts well beyond it (d_z = 0.3)."""
    real = rng.gamma(20.0, 1.0, size=(n, n_null + n_planted))
    shift = np.r_[np.full(n_null, 0.1), np.full(n_planted, 0.3)]
    sign = rng.choice([-1.0, 1.0], size=n_null + n_planted)
    gen = real + sign * shift + rng.normal(size=real.shape)  # sd of the difference: 1
    is_null = np.r_[np.ones(n_null, bool), np.zeros(n_planted, bool)]
    return real, gen, is_null


def test_reported_verdict_controls_the_false_discovery_rate(tmp_path: Path) -> None:
    fdp, fdp_uncorrected, power = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        real, gen, is_null = _boundary_world(rng, n=600, n_null=1500, n_planted=80)
        stats = _stats(tmp_path / str(seed), real, gen)
        flagged = stats["significant"].to_numpy()
        uncorrected = stats["p_value"].to_numpy() < PARAMS.alpha
        fdp.append((flagged & is_null).sum() / max(flagged.sum(), 1))
        fdp_uncorrected.append((uncorrected & is_null).sum() / max(uncorrected.sum(), 1))
        power.append(flagged[~is_null].mean())
    print(
        f"FDR {np.mean(fdp):.3f}, no BH {np.mean(fdp_uncorrected):.3f}, power {np.mean(power):.2f}"
    )
    assert np.mean(fdp) <= PARAMS.alpha
    assert np.mean(fdp_uncorrected) > 2 * PARAMS.alpha  # the correction is what holds it
    assert np.mean(power) > 0.8  # planted effects of d_z = 0.3 at n = 600 are found


def test_p_values_are_calibrated_at_the_margin() -> None:
    """At the boundary of "negligible" (d_z = margin) P(p ≤ a) ≈ a, never much above it; well
    inside it (no change at all) the test is conservative; a one-sided miss would fail."""
    rng = np.random.default_rng(7)
    n, c = 800, 4000
    real = rng.gamma(20.0, 1.0, size=(n, c))
    for shift, sign in ((0.1, 1.0), (0.1, -1.0)):
        gen = real + sign * shift + rng.normal(size=(n, c))
        moments = PairedMoments.zeros(c).add(real, gen)
        p = minimum_effect_p_values(moments, min_effect_size=0.1, min_relative=0.0)
        for a in (0.01, 0.05, 0.2):
            assert abs((p <= a).mean() - a) < max(0.3 * a, 0.006), (shift, sign, a)
    p_null = minimum_effect_p_values(
        PairedMoments.zeros(c).add(real, real + rng.normal(size=(n, c))), 0.1, 0.0
    )
    assert (p_null <= 0.05).mean() < 0.005


def test_gone_rare_concept_is_significant_but_a_tiny_shift_is_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 8000
    real = np.zeros((n, 3))
    real[:, 0] = (rng.random(n) < 0.05) * rng.gamma(2.0, 1.0, n)  # rare, gone: d_z ≈ −0.2
    real[:, 1] = rng.gamma(20.0, 1.0, n)  # common, nudged by 1%: "significant" with n pairs
    real[:, 2] = rng.gamma(20.0, 1.0, n)  # unchanged
    gen = real + rng.normal(0.0, 0.5, (n, 3)) * (real > 0)
    gen[:, 0] = 0.0
    gen[:, 1] = real[:, 1] * 1.01 + rng.normal(0.0, 5.0, n)  # d_z ≈ 0.04
    stats = _stats(tmp_path, real, gen)
    by_concept = {r["concept"]: r for r in stats.iter_rows(named=True)}
    assert by_concept[0]["relative"] == -1.0 and abs(by_concept[0]["effect_size"]) < 0.3
    assert by_concept[0]["significant"] and by_concept[0]["delta"] > 0.1
    assert not by_concept[1]["significant"] and not by_concept[2]["significant"]
    flagged = flag_blindspots(stats, PARAMS)
    assert (
        flagged["concept"].to_list()[0] == 0 and flagged.row(0, named=True)["kind"] == "suppressed"
    )
    # with no margin the 1% nudge is a real, detectable change: the margin is what keeps it out
    loose = BlindspotParams(n_bootstrap=0, n_permutations=0, min_effect_size=0.0, min_relative=0.0)
    assert _stats(tmp_path / "loose", real, gen, loose).filter(concept=1)["significant"].item()


@pytest.mark.parametrize("arm", ["effect", "relative"])
def test_each_margin_alone_decides(arm: str) -> None:
    """A concept beyond only one margin is still significant (the alternative is the union)."""
    rng = np.random.default_rng(3)
    n = 3000
    real = (rng.random((n, 1)) < 0.02) * rng.gamma(2.0, 1.0, (n, 1))  # very rare
    gen = real * 0.2  # relative −0.67: far beyond 0.25; d_z ≈ −0.12, barely beyond 0.1
    moments = PairedMoments.zeros(1).add(real, gen)
    if arm == "effect":
        p = minimum_effect_p_values(moments, min_effect_size=0.1, min_relative=0.0)
        assert p[0] > 0.01  # not shown beyond the effect-size margin
    else:
        p = minimum_effect_p_values(moments, min_effect_size=0.1, min_relative=0.25)
        assert p[0] < 1e-6  # but far beyond the relative one
    assert pl.Series(p).is_finite().all()

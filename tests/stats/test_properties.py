"""Property tests (hypothesis) of what a statistician would state about the verdict: p-values
uniform under the exact null at the margin, for every arm and sign; Benjamini–Hochberg
q-values at least p and in p's order; confidence intervals that cover the planted effect at
their level. Derandomised: the same examples every run, each a few seconds at most."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from blindspot_assets.stats.changes import paired_change
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.scores import benjamini_hochberg
from blindspot_assets.stats.significance import (
    PairedMoments,
    effect_size_p_values,
    relative_lower_bound,
    relative_p_values,
)
from tests.stats import independent as ind
from tests.stats.conftest import write_codes

FEW = settings(max_examples=4, derandomize=True, deadline=None)
N_PAIRS, N_NULLS = 400, 2000  # pairs per concept; concepts, each an independent null
MARGIN_DZ, MARGIN_REL = 0.1, 0.25
seeds = st.integers(min_value=0, max_value=2**16)
signs = st.sampled_from([-1.0, 1.0])


def _moments(r: np.ndarray, g: np.ndarray) -> PairedMoments:
    return PairedMoments.zeros(r.shape[1]).add(r, g)


@FEW
@given(seed=seeds, sign=signs)
def test_effect_size_p_values_are_uniform_at_the_margin(seed: int, sign: float) -> None:
    """d_z exactly ± the margin (normal differences of sd 1, mean ± margin)."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(20.0, 1.0, size=(N_PAIRS, N_NULLS))
    g = r + rng.normal(sign * MARGIN_DZ, 1.0, size=r.shape)
    p = effect_size_p_values(_moments(r, g), MARGIN_DZ)
    assert stats.kstest(p, "uniform").pvalue > 1e-3


@FEW
@given(seed=seeds, sign=signs)
def test_relative_p_values_are_uniform_at_the_margin(seed: int, sign: float) -> None:
    """The energy ratio exactly at ρ (a loss, sign −1) or 1/ρ (a gain, sign +1). The arm is
    2 · min(p_down, p_up): at one boundary the other one-sided p is ≈ 1, so the p-value is
    min(1, 2U) with U uniform — half of the nulls at 1, the rest uniform."""
    rng = np.random.default_rng(seed)
    rho = ind.rho_of(MARGIN_REL)
    side = rng.gamma(20.0, 1.0, size=(N_PAIRS, N_NULLS))
    other = rho * side + rng.normal(0.0, 3.0, size=side.shape)
    r, g = (side, other) if sign < 0 else (other, side)
    p = relative_p_values(_moments(r, g), MARGIN_REL)
    at_one = p >= 1.0
    assert abs(at_one.mean() - 0.5) < 0.05, at_one.mean()
    assert stats.kstest(p[~at_one], "uniform").pvalue > 1e-3


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    p=st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=50)
)
def test_q_values_are_at_least_p_and_in_its_order(p: list[float]) -> None:
    p_arr = np.asarray(p)
    q = benjamini_hochberg(p_arr)
    assert (q >= p_arr - 1e-15).all() and (q <= 1.0).all()
    order = np.argsort(p_arr, kind="stable")
    assert (np.diff(q[order]) >= -1e-15).all()  # monotone in p
    np.testing.assert_allclose(q, ind.bh(p_arr), rtol=1e-12, atol=1e-15)


@settings(max_examples=3, derandomize=True, deadline=None)
@given(seed=seeds, level=st.sampled_from([0.8, 0.95]))
def test_change_intervals_cover_the_planted_change_at_their_level(seed: int, level: float) -> None:
    """The paired change between two generated sets: each concept a planted change δ_k (the
    candidate's mean shift), noise of mean 0; the share of intervals holding δ_k is the level."""
    rng = np.random.default_rng(seed)
    n, c = 300, 400
    real = rng.gamma(5.0, 1.0, size=(n, c))
    base = real + rng.normal(0.0, 1.0, size=(n, c))
    planted = rng.uniform(-1.0, 1.0, size=c)
    cand = base + planted + rng.normal(0.0, rng.uniform(0.5, 2.0, size=c), size=(n, c))
    ids = [f"i{i:04d}" for i in range(n)]
    params = BlindspotParams(n_bootstrap=0, n_permutations=0, ci_level=level, block_rows=128)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            write_codes(Path(tmp) / f"{name}.zarr", ids, x, chunk_rows=128)
            for name, x in (("real", real), ("base", base), ("cand", cand))
        ]
        out = paired_change(*paths, params)
    covered = (out["change_ci_low"].to_numpy() <= planted) & (
        planted <= out["change_ci_high"].to_numpy()
    )
    assert abs(covered.mean() - level) < 0.04, covered.mean()


@FEW
@given(seed=seeds)
def test_relative_lower_bound_is_below_the_planted_loss(seed: int) -> None:
    """The lower confidence bound of |relative| at level 0.95 lies under the true |relative|
    in about 97.5 % of concepts (one side of a two-sided interval), never much less."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(5.0, 1.0, size=(N_PAIRS, 1000))
    factor = rng.uniform(0.2, 0.9, size=1000)  # E_G = factor · E_R
    g = factor * r + rng.normal(0.0, 1.0, size=r.shape)
    true = np.abs((factor - 1.0) / (factor + 1.0))
    bound = relative_lower_bound(_moments(r, g), 0.95)
    below = bound <= true
    assert 0.95 <= below.mean() <= 0.995, below.mean()

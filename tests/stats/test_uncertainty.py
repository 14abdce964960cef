"""The streamed resampling is the textbook resampling, vectorised."""

from __future__ import annotations

import numpy as np

from blindspot_assets.stats.uncertainty import PairedDiffAccumulator


def _stream(
    real: np.ndarray, gen: np.ndarray, blocks: list[int], **kw: int
) -> PairedDiffAccumulator:
    acc = PairedDiffAccumulator(real.shape[1], real.shape[0], seed=kw.pop("seed", 0), **kw)
    start = 0
    for size in blocks:
        acc.update(real[start : start + size], gen[start : start + size])
        start += size
    return acc


def test_streamed_bootstrap_counts_are_an_exact_multinomial() -> None:
    n = 100
    ones = np.ones((n, 1), dtype=np.float32)
    # d_i = 1 for every pair, so each replicate's accumulated sum is its total count
    acc = _stream(np.zeros_like(ones), ones, [7, 30, 1, 62], n_bootstrap=300, n_permutations=0)
    totals = acc.resampled_rc.numpy()[:, 0]
    assert (totals == n).all()
    # and pair-level counts are Binomial(n, 1/n): per-pair d = one-hot tracks one pair
    eye = np.eye(n, dtype=np.float32)
    acc = _stream(np.zeros_like(eye), eye, [40, 60], n_bootstrap=2000, n_permutations=0)
    counts = acc.resampled_rc.numpy()
    assert abs(counts.mean() - 1.0) < 0.01
    assert abs(counts.var() - (1 - 1 / n)) < 0.05


def test_bootstrap_ci_width_matches_normal_theory() -> None:
    rng = np.random.default_rng(0)
    n, c = 500, 20
    real = rng.gamma(2.0, 1.0, size=(n, c)).astype(np.float32)
    gen = (real + rng.normal(0.3, 1.0, size=(n, c))).astype(np.float32)
    res = _stream(real, gen, [128] * 3 + [116], n_bootstrap=1000, n_permutations=0).finish(0.95)
    d = gen.astype(np.float64) - real
    half_width = 1.96 * d.std(0, ddof=1) / np.sqrt(n)
    np.testing.assert_allclose((res.ci_high_k - res.ci_low_k) / 2, half_width, rtol=0.15)
    np.testing.assert_allclose(res.mean_diff_k, d.mean(0), rtol=1e-6)


def test_sign_flip_p_values_are_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(1)
    n, c = 60, 400
    real = rng.exponential(1.0, size=(n, c)).astype(np.float32)
    gen = rng.exponential(1.0, size=(n, c)).astype(np.float32)
    res = _stream(real, gen, [25, 35], n_bootstrap=0, n_permutations=400, seed=2).finish()
    frac = float((res.p_value_k < 0.05).mean())
    assert 0.01 <= frac <= 0.09
    assert 0.4 < float(res.p_value_mc_k.mean()) < 0.6
    # a concept identical on both sides has nothing to test
    same = _stream(real[:, :1], real[:, :1], [60], n_bootstrap=0, n_permutations=50).finish()
    assert same.p_value_k[0] == 1.0 and same.effect_size_k[0] == 0.0


def test_p_values_go_below_the_monte_carlo_floor_for_clear_effects() -> None:
    rng = np.random.default_rng(2)
    n = 300
    real = rng.exponential(1.0, size=(n, 1)).astype(np.float32)
    gen = np.zeros_like(real)
    res = _stream(real, gen, [300], n_bootstrap=0, n_permutations=100).finish()
    assert res.p_value_mc_k[0] == 1 / 101
    assert res.p_value_k[0] < 1e-20

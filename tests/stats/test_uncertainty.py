"""The streamed resampling is the textbook resampling, vectorised."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

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
    """20 seeds × 400 null concepts (8,000 tests): p < α happens at rate α within 3.5 binomial
    standard errors (±0.0085 at α = 0.05), at α = 0.05 and 0.01, split evenly between the two
    signs of the mean difference. A test 1.8× too liberal (0.09) or a one-sided test (all of its
    rejections on one side) falls outside."""
    n, c = 60, 400
    p_values, signs = [], []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        real = rng.exponential(1.0, size=(n, c)).astype(np.float32)
        gen = rng.exponential(1.0, size=(n, c)).astype(np.float32)
        res = _stream(real, gen, [25, 35], n_bootstrap=0, n_permutations=400, seed=seed).finish()
        p_values.append(res.p_value_k)
        signs.append(np.sign(res.mean_diff_k))
        assert 0.45 < float(res.p_value_mc_k.mean()) < 0.55
    p, sign = np.concatenate(p_values), np.concatenate(signs)
    total = p.size
    for alpha in (0.05, 0.01):
        rate = float((p < alpha).mean())
        assert abs(rate - alpha) < 3.5 * np.sqrt(alpha * (1 - alpha) / total), (alpha, rate)
        half = alpha / 2
        for side in (1.0, -1.0):
            side_rate = float(((p < alpha) & (sign == side)).mean())
            assert abs(side_rate - half) < 3.5 * np.sqrt(half * (1 - half) / total), (
                alpha,
                side,
                side_rate,
            )
    # a concept identical on both sides has nothing to test
    real = np.random.default_rng(1).exponential(1.0, size=(n, 1)).astype(np.float32)
    same = _stream(real, real, [60], n_bootstrap=0, n_permutations=50).finish()
    assert same.p_value_k[0] == 1.0 and same.effect_size_k[0] == 0.0


def test_p_values_go_below_the_monte_carlo_floor_for_clear_effects() -> None:
    rng = np.random.default_rng(2)
    n = 300
    real = rng.exponential(1.0, size=(n, 1)).astype(np.float32)
    gen = np.zeros_like(real)
    res = _stream(real, gen, [300], n_bootstrap=0, n_permutations=100).finish()
    assert res.p_value_mc_k[0] == 1 / 101
    assert res.p_value_k[0] < 1e-20


def test_pooled_update_equals_the_serial_one() -> None:
    """Drawing the resampling weights in a pool thread beside the moments changes nothing:
    same random stream, same resampled sums, same moments, bit for bit."""
    rng = np.random.default_rng(5)
    blocks = [
        (rng.random((64, 30)) * (rng.random((64, 30)) < 0.3)).astype(np.float32) for _ in range(6)
    ]
    serial = PairedDiffAccumulator(30, 192, 50, 40, seed=1)
    pooled = PairedDiffAccumulator(30, 192, 50, 40, seed=1)
    with ThreadPoolExecutor(1) as pool:
        for real, gen in zip(blocks[:3], blocks[3:], strict=True):
            serial.update(real, gen)
            pooled.update(real, gen, pool=pool)
    assert torch.equal(serial.resampled_rc, pooled.resampled_rc)
    assert np.array_equal(serial.moments.sum_cross_k, pooled.moments.sum_cross_k)
    a, b = serial.finish(), pooled.finish()
    assert np.array_equal(a.ci_low_k, b.ci_low_k) and np.array_equal(a.p_value_k, b.p_value_k)


def test_effect_size_and_hoeffding_p_of_small_differences_written_out() -> None:
    """Without resampling: d_z = mean / sd (n − 1), ±inf for a constant non-zero difference,
    0 for none; p = min(1, 2 exp(−T² / (2 Σd²))), T = Σd; no interval, no Monte-Carlo p."""
    real = np.array([[1.0, 2.0, 1.0, 0.0], [2.0, 2.0, 1.0, 0.0], [4.0, 2.0, 1.0, 0.0]])
    gen = np.array([[2.0, 3.0, 1.0, 0.0], [5.0, 3.0, 1.0, 0.0], [3.0, 3.0, 1.0, 1.0]])
    result = _stream(real, gen, [2, 1], n_bootstrap=0, n_permutations=0).finish()
    d = gen - real  # [1, 3, -1], [1, 1, 1], [0, 0, 0], [0, 0, 1]
    assert result.n_pairs == 3
    np.testing.assert_allclose(result.mean_diff_k, d.mean(axis=0))
    dz0, dz3 = 1.0 / 2.0, (1 / 3) / np.sqrt(1 / 3)  # sd: √((0 + 4 + 4) / 2) = 2; √(1/3)
    np.testing.assert_allclose(result.effect_size_k, [dz0, np.inf, 0.0, dz3])
    # T = 3, 3, 0, 1 and Σd² = 11, 3, 0, 1: 2 exp(−9/22) and 2 exp(−1/2) are above 1
    np.testing.assert_allclose(result.p_value_k, [1.0, 2 * np.exp(-9 / 6), 1.0, 1.0])
    assert np.isnan(result.ci_low_k).all() and np.isnan(result.p_value_mc_k).all()
    minus = _stream(gen, real, [3], n_bootstrap=0, n_permutations=0).finish()
    assert minus.effect_size_k[1] == -np.inf
    # one pair: every sign flip gives |T*| = |T|, a tie each time, so the Monte-Carlo p is 1
    one = _stream(real[:1], gen[:1], [1], n_bootstrap=0, n_permutations=50).finish()
    assert one.p_value_mc_k[0] == 1.0

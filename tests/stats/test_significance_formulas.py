"""The minimum-effect test's p-values against the formulas written out with scipy
(``tests/stats/independent.py``), arm by arm and combined, on small paired samples.

Regressions (issue 29): the relative margin's upward arm testing the downward direction again,
and the Bonferroni factor over the two margins dropped, passed every significance test before;
each test below fails on one of them."""

from __future__ import annotations

import numpy as np
import pytest

from blindspot_assets.stats.significance import (
    PairedMoments,
    effect_size_p_values,
    minimum_effect_p_values,
    relative_p_values,
)
from tests.stats import independent as ind


def _sample(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Six concepts: unchanged, nudged down and up, lost and gained beyond the relative margin,
    and a rare one whose energy triples (exaggerated, small d_z)."""
    rng = np.random.default_rng(seed)
    r = rng.gamma(4.0, 1.0, size=(n, 6))
    noise = rng.normal(0.0, 0.8, size=(n, 6))
    g = r + noise
    g[:, 1] -= 0.15
    g[:, 2] += 0.15
    g[:, 3] = 0.4 * r[:, 3] + noise[:, 3]
    g[:, 4] = 2.2 * r[:, 4] + noise[:, 4]
    rare = rng.random(n) < 0.01
    r[:, 5] = rare * rng.gamma(2.0, 1.0, n)
    g[:, 5] = 3.0 * r[:, 5]
    return r, g


def _moments(r: np.ndarray, g: np.ndarray) -> PairedMoments:
    return PairedMoments.zeros(r.shape[1]).add(r.astype(np.float32), g.astype(np.float32))


def _f32(*arrays: np.ndarray) -> list[np.ndarray]:
    """The values as the code stores see them (float32), in float64 for scipy."""
    return [a.astype(np.float32).astype(np.float64) for a in arrays]


@pytest.mark.parametrize("seed", [0, 1])
def test_each_arm_matches_its_written_out_formula(seed: int) -> None:
    r, g = _f32(*_sample(seed))
    moments = _moments(r, g)
    np.testing.assert_allclose(
        effect_size_p_values(moments, 0.1), ind.p_effect_size(r, g, 0.1), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(
        relative_p_values(moments, 0.25), ind.p_relative(r, g, 0.25), rtol=1e-6, atol=1e-12
    )


def test_a_gain_beyond_the_relative_margin_is_found_by_the_upward_arm() -> None:
    """The rare concept that triples: d_z is small, so only the relative arm can show it, and
    only through its upward one-sided test (the downward one says nothing about a gain)."""
    r, g = _f32(*_sample(3, n=4000))
    down, up = ind.p_relative_arms(r, g, 0.25)
    assert down[5] > 0.5 and up[5] < 1e-4  # the independent computation: a gain
    assert ind.p_effect_size(r, g, 0.1)[5] > 0.05  # that d_z cannot show
    p = relative_p_values(_moments(r, g), 0.25)
    assert p[5] < 1e-4 and p[4] < 1e-6  # both gains, the rare one and the common one
    assert p[3] < 1e-6  # and the loss
    assert p[0] > 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_two_margins_combine_by_bonferroni(seed: int) -> None:
    r, g = _f32(*_sample(seed))
    p = minimum_effect_p_values(_moments(r, g), 0.1, 0.25)
    expected = ind.p_minimum_effect(r, g, 0.1, 0.25)
    small = (expected > 1e-9) & (expected < 0.5)  # where the factor 2 shows (over atol)
    assert small.sum() >= 2
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-12)
    # one margin alone: that arm's p-value, no factor
    np.testing.assert_allclose(
        minimum_effect_p_values(_moments(r, g), 0.1, 0.0),
        ind.p_effect_size(r, g, 0.1),
        rtol=1e-6,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        minimum_effect_p_values(_moments(r, g), 0.0, 0.25),
        ind.p_relative(r, g, 0.25),
        rtol=1e-6,
        atol=1e-12,
    )


def test_no_margin_is_the_ordinary_two_sided_paired_z_test() -> None:
    r, g = _f32(*_sample(4))
    d = g - r
    z = d.mean(axis=0) / (d.std(axis=0, ddof=1) / np.sqrt(d.shape[0]))
    expected = 2.0 * ind.stats.norm.sf(np.abs(z))
    np.testing.assert_allclose(
        minimum_effect_p_values(_moments(r, g), 0.0, 0.0), expected, rtol=1e-6, atol=1e-12
    )


def test_a_constant_difference_is_decided_without_a_variance() -> None:
    """sd = 0: a constant loss beyond the margins is certain (p = 0), in either direction; no
    difference at all is certainly negligible (p = 1). Concepts: every G_i = 0 against R_i = 2
    (gone), G_i = 2 against R_i = 0 (new), G_i = R_i = 2 (unchanged)."""
    r = np.array([[2.0, 0.0, 2.0]] * 5)
    g = np.array([[0.0, 2.0, 2.0]] * 5)
    moments = PairedMoments.zeros(3).add(r, g)
    np.testing.assert_array_equal(relative_p_values(moments, 0.25), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(effect_size_p_values(moments, 0.2), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(minimum_effect_p_values(moments, 0.2, 0.25), [0.0, 0.0, 1.0])

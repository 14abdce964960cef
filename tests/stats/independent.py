"""The verdict's statistics written out with scipy on plain arrays, from docs/method.md and the
docstring of ``stats/significance.py`` — never through the module's own helpers — so that a
test comparing against them fails when the module's arithmetic changes.

Every function takes the paired values per concept as (pairs × concepts) arrays: R the real
(or base) side, G the generated (or candidate) side."""

from __future__ import annotations

import numpy as np
from scipy import stats


def rho_of(min_relative: float) -> float:
    """The energy-ratio bound of the relative margin: |relative| ≤ m ⇔ ρ ≤ E_G / E_R ≤ 1/ρ."""
    return (1.0 - min_relative) / (1.0 + min_relative)


def p_below(x: np.ndarray) -> np.ndarray:
    """Per column, the one-sided large-sample p-value of "mean(x) ≥ 0" against "< 0": Φ(z),
    z = mean / (sd / √n), sd with n − 1."""
    n = x.shape[0]
    z = x.mean(axis=0) / (x.std(axis=0, ddof=1) / np.sqrt(n))
    return stats.norm.cdf(z)


def p_effect_size(r: np.ndarray, g: np.ndarray, margin: float) -> np.ndarray:
    """H0 |d_z| ≤ margin: sup over the boundary of two normal tails, se at d_z = margin."""
    d = g - r
    n = d.shape[0]
    dz = np.abs(d.mean(axis=0)) / d.std(axis=0, ddof=1)
    se = np.sqrt((1.0 + margin**2 / 2.0) / n)
    return np.minimum(stats.norm.sf((dz - margin) / se) + stats.norm.sf((dz + margin) / se), 1.0)


def p_relative_arms(r: np.ndarray, g: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The relative margin's two one-sided p-values: "down" rejects E_G ≥ ρ E_R (a loss
    beyond the margin), "up" rejects E_R ≥ ρ E_G (a gain beyond it)."""
    rho = rho_of(margin)
    return p_below(g - rho * r), p_below(r - rho * g)


def p_relative(r: np.ndarray, g: np.ndarray, margin: float) -> np.ndarray:
    down, up = p_relative_arms(r, g, margin)
    return np.minimum(2.0 * np.minimum(down, up), 1.0)


def p_minimum_effect(
    r: np.ndarray, g: np.ndarray, min_effect_size: float, min_relative: float
) -> np.ndarray:
    """Both margins, Bonferroni: 2 · min(p_dz, p_rel), at most 1."""
    both = np.minimum(p_effect_size(r, g, min_effect_size), p_relative(r, g, min_relative))
    return np.minimum(2.0 * both, 1.0)


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values, scipy's."""
    return stats.false_discovery_control(np.asarray(p, dtype=np.float64), method="bh")

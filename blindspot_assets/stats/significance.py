"""The one definition of a ``significant`` blindspot, and the guarantee it carries.

A concept is *significant* when a minimum-effect test rejects "the change is negligible" after
Benjamini–Hochberg over all concepts of the model: ``q_value < alpha``. Negligible means both
margins hold:

- standardised: |d_z| ≤ ``min_effect_size``, with d_z = mean(d) / sd(d) over the pairs'
  differences d_i = ξ_k(x′_i) − ξ_k(x_i) (Cohen's paired effect size);
- relative: |relative| ≤ ``min_relative``, relative = (E_G − E_R) / (E_G + E_R), i.e. the
  energy ratio E_G / E_R lies within [ρ, 1/ρ] with ρ = (1 − min_relative) / (1 + min_relative)
  (a concept that is simply gone has relative = −1 even when it is too rare for a large d_z).

Each margin is tested in both directions by large-sample z-tests on paired moments, streamed:

- d_z: d̂_z is approximately Normal(d_z, (1 + d_z² / 2) / n); the p-value is the supremum over
  the null's boundary |d_z| = m: Φc((|d̂_z| − m) / se) + Φc((|d̂_z| + m) / se), se at d_z = m.
- relative: "E_G ≥ ρ E_R" is the one-sided hypothesis mean(G − ρR) ≥ 0 (t statistic of the
  paired values G_i − ρ R_i), and "E_R ≥ ρ E_G" likewise; p = 2 min(p_down, p_up).

The two margins combine by Bonferroni, p = 2 min(p_dz, p_rel). A margin set to 0 is not used;
with both at 0 the null is "no change at all" and the test is the ordinary two-sided paired
z-test of mean(d) = 0. Benjamini–Hochberg over these p-values controls
the false-discovery rate at ``alpha`` — the expected share of flagged concepts whose change is
in fact negligible — under independence or positive dependence of the concepts' tests; so a
model with R significant concepts is expected to have at most ``alpha × R`` false flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from blindspot_assets.stats.sparse_sums import Entries

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class PairedMoments:
    """Per-concept sums over n pairs of the real value R_i, the generated value G_i and their
    difference d_i = G_i − R_i (kept directly: derived from the other sums it would lose its
    precision to cancellation when the two sides nearly agree)."""

    n: int
    sum_real_k: F64
    sum_gen_k: F64
    sum_real2_k: F64
    sum_gen2_k: F64
    sum_cross_k: F64  # Σ R_i G_i
    sum_diff_k: F64  # Σ d_i
    sum_diff2_k: F64  # Σ d_i²
    sum_abs_diff_k: F64  # Σ |d_i|

    @classmethod
    def zeros(cls, n_concepts: int) -> PairedMoments:
        return cls(0, *(np.zeros(n_concepts, dtype=np.float64) for _ in range(8)))

    def add(
        self,
        real_mc: NDArray[np.floating],
        gen_mc: NDArray[np.floating],
        entries: tuple[Entries, Entries] | None = None,
    ) -> PairedMoments:
        """These sums plus those of a block of pairs (m × c), from the non-zero entries of R
        and G (``entries``, when the caller has them): d_i = G_i − R_i is exact in float64 at
        R's entries and is G_i where only G is non-zero."""
        real = np.ascontiguousarray(real_mc, dtype=np.float32)
        gen = np.ascontiguousarray(gen_mc, dtype=np.float32)
        r, g = entries if entries is not None else (Entries.of(real), Entries.of(gen))
        gen_at_r = r.gather(gen)
        d_at_r = gen_at_r - r.value
        g_only = np.where(g.gather(real) == 0, g.value, 0.0)  # G where R is zero
        out = (
            r.sum(), g.sum(), r.sum(r.value**2), g.sum(g.value**2), r.sum(r.value * gen_at_r),
            r.sum(d_at_r) + g.sum(g_only),
            r.sum(d_at_r**2) + g.sum(g_only**2),
            r.sum(np.abs(d_at_r)) + g.sum(np.abs(g_only)),
        )  # fmt: skip
        current = (
            self.sum_real_k, self.sum_gen_k, self.sum_real2_k, self.sum_gen2_k, self.sum_cross_k,
            self.sum_diff_k, self.sum_diff2_k, self.sum_abs_diff_k,
        )  # fmt: skip
        return PairedMoments(
            self.n + real.shape[0], *(a + b for a, b in zip(current, out, strict=True))
        )

    def diff_mean_sd(self) -> tuple[F64, F64]:
        """Mean and sample sd of the paired differences d_i, per concept."""
        n = max(self.n, 1)
        mean = self.sum_diff_k / n
        var = np.maximum(self.sum_diff2_k - self.sum_diff_k**2 / n, 0.0) / max(self.n - 1, 1)
        return mean, np.sqrt(var)

    def combination(self, a: float, b: float) -> tuple[F64, F64]:
        """Mean and sample sd over pairs of a·G_i + b·R_i, per concept."""
        n = max(self.n, 1)
        total = a * self.sum_gen_k + b * self.sum_real_k
        squares = a * a * self.sum_gen2_k + 2 * a * b * self.sum_cross_k + b * b * self.sum_real2_k
        mean = total / n
        var = np.maximum(squares - total * total / n, 0.0) / max(self.n - 1, 1)
        # float cancellation leaves a tiny variance where the values are all equal
        var = np.where(var <= 1e-12 * np.maximum(squares / n, 1e-300), 0.0, var)
        return mean, np.sqrt(var)


def _normal_sf(z: F64) -> F64:
    return np.asarray(torch.special.ndtr(torch.from_numpy(-np.asarray(z, np.float64))).numpy())


def _one_sided_below(mean: F64, sd: F64, n: int) -> F64:
    """p-value of "the mean is ≥ 0" against "< 0" (z statistic); exact at sd = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = mean / (sd / np.sqrt(max(n, 1)))
    p = _normal_sf(-np.where(sd > 0, z, 0.0))
    return np.where(sd > 0, p, np.where(mean < 0, 0.0, 1.0))


def effect_size_p_values(moments: PairedMoments, margin: float) -> F64:
    """p-values of H0: |d_z| ≤ ``margin`` (two-sided when the margin is 0)."""
    mean, sd = moments.diff_mean_sd()
    n = max(moments.n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = np.abs(mean) / sd
    se = np.sqrt((1.0 + margin * margin / 2.0) / n)
    p = _normal_sf((dz - margin) / se) + _normal_sf((dz + margin) / se)
    # a constant non-zero difference is an infinite effect; no difference at all is none
    p = np.where(sd > 0, p, np.where(mean != 0, 0.0, 1.0))
    return np.minimum(p, 1.0)


def relative_p_values(moments: PairedMoments, margin: float) -> F64:
    """p-values of H0: |relative| ≤ ``margin``, i.e. ρ ≤ E_G / E_R ≤ 1 / ρ."""
    rho = (1.0 - margin) / (1.0 + margin)
    down = _one_sided_below(*moments.combination(1.0, -rho), moments.n)  # E_G < ρ E_R
    up = _one_sided_below(*moments.combination(-rho, 1.0), moments.n)  # E_R < ρ E_G
    return np.minimum(2.0 * np.minimum(down, up), 1.0)


def minimum_effect_p_values(
    moments: PairedMoments, min_effect_size: float, min_relative: float
) -> F64:
    """Per concept, the p-value of "the change is negligible" (see the module docstring)."""
    if moments.n < 2:
        return np.ones_like(moments.sum_real_k)
    arms = []
    if min_effect_size > 0:
        arms.append(effect_size_p_values(moments, min_effect_size))
    if min_relative > 0:
        arms.append(relative_p_values(moments, min_relative))
    if not arms:  # no margin: the ordinary two-sided paired test of "no change"
        arms.append(effect_size_p_values(moments, 0.0))
    smallest: F64 = np.min(np.stack(arms), axis=0)
    return np.minimum(len(arms) * smallest, 1.0)


def expected_false_flags(n_significant: int, alpha: float) -> float:
    """The FDR bound in counts: of ``n_significant`` flags, at most this many are expected to
    be concepts whose change is negligible."""
    return alpha * n_significant


def relative_lower_bound(moments: PairedMoments, ci_level: float) -> F64:
    """Per concept, the lower confidence bound of |relative| — how much of the concept is lost
    or added: relative = (E_G − E_R) / (E_G + E_R) = tanh(½ log(E_G / E_R)), so 1 means gone
    (or new) entirely and 0 unchanged. Delta method on the paired means, two-sided at
    ``ci_level``; 0 where the bound crosses 0 or nothing fires."""
    n = max(moments.n, 1)
    mean_g, sd_g = moments.combination(1.0, 0.0)
    mean_r, sd_r = moments.combination(0.0, 1.0)
    cov = (moments.sum_cross_k - n * mean_g * mean_r) / max(moments.n - 1, 1)
    total = mean_g + mean_r
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (mean_g - mean_r) / total
        grad_g, grad_r = 2.0 * mean_r / total**2, -2.0 * mean_g / total**2
        var = (grad_g**2 * sd_g**2 + grad_r**2 * sd_r**2 + 2.0 * grad_g * grad_r * cov) / n
    z = float(-torch.special.ndtri(torch.tensor((1.0 - ci_level) / 2.0, dtype=torch.float64)))
    bound = np.abs(rel) - z * np.sqrt(np.maximum(var, 0.0))
    return np.where(total > 0, np.clip(bound, 0.0, 1.0), 0.0)

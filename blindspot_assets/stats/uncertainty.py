"""Paired uncertainty per concept: bootstrap CIs, sign-flip permutation p-values, effect sizes.

Everything is accumulated over streamed blocks of pairs and vectorised over concepts: one block
of differences ``d_mc = ξ(x') − ξ(x)`` (m pairs × c concepts) is multiplied by a matrix of
resampling weights, ``(B + P) × m``, whose first B rows are bootstrap counts and last P rows
random signs. The accumulator is ``(B + P) × c`` float32 (1000 + 1000 by 32,000 → 256 MB),
whatever the number of pairs.

- **Bootstrap** (exact multinomial, streamed): resampling n pairs with replacement gives pair i a
  count; the counts of a block are drawn as ``Binomial(draws left, m / pairs left)`` draws for
  the block, spread uniformly over its m pairs by a multinomial. Over all blocks this is exactly
  ``Multinomial(n, 1/n)`` per replicate, with the data read once. The CI of ΔE_k is the
  percentile interval of the replicate means; δ is monotone in ΔE, so its CI is the sigmoid of
  that interval.
- **Sign-flip test** of "the pair's difference is symmetric about 0": T_k = Σ_i d_ik against
  T*_k = Σ_i s_i d_ik with random signs s. The Monte-Carlo p-value is
  (1 + #{|T*| ≥ |T|}) / (P + 1), which cannot go below 1/(P + 1); with 32,000 concepts
  Benjamini–Hochberg needs far smaller p-values than that. So the p-value is the smaller of the
  Monte-Carlo one and Hoeffding's bound on the exact sign-flip tail,
  ``2 exp(−T² / (2 Σ_i d_i²))``, which holds for every n and is never below the exact p-value.
- **Effect size**: Cohen's d_z = mean(d) / sd(d) over pairs, per concept (scale-free, so it
  ranks a small-object concept that is gone above noise on a big one even when δ ≈ 0.5).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from blindspot_assets.stats.significance import PairedMoments
from blindspot_assets.stats.sparse_sums import Entries, scratch

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
_COLUMN_CHUNK = 4096


@dataclass(frozen=True)
class PairedDiffResult:
    n_pairs: int
    mean_diff_k: F64
    ci_low_k: F64  # percentile CI of the mean difference (NaN without bootstrap)
    ci_high_k: F64
    effect_size_k: F64  # Cohen's d_z
    p_value_k: F64
    p_value_mc_k: F64  # Monte-Carlo sign-flip p-value alone (NaN without permutations)
    moments: PairedMoments  # paired sums behind the minimum-effect test (``significance``)


class PairedDiffAccumulator:
    """Streams blocks of paired ξ and accumulates everything the uncertainty needs.

    ``n_pairs`` must be known up front (the streamed multinomial bootstrap needs it) and the
    blocks must add up to exactly that many pairs.
    """

    def __init__(
        self,
        n_concepts: int,
        n_pairs: int,
        n_bootstrap: int,
        n_permutations: int,
        seed: int,
    ) -> None:
        self.n_concepts = n_concepts
        self.n_pairs = n_pairs
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.moments = PairedMoments.zeros(n_concepts)
        self.draws_left_b: I64 = np.full(n_bootstrap, n_pairs, dtype=np.int64)
        n_resamples = n_bootstrap + n_permutations
        self.resampled_rc = torch.zeros((n_resamples, n_concepts), dtype=torch.float32)

    def update(
        self,
        xi_real_mc: np.ndarray,
        xi_gen_mc: np.ndarray,
        entries: tuple[Entries, Entries] | None = None,
        pool: Executor | None = None,
    ) -> None:
        """Add a block of pairs; ``entries``: both sides' non-zero entries, when known.

        With a ``pool`` the block's resampling weights are drawn there while the moments are
        summed here (the random stream is the same: one draw per block, in block order)."""
        if xi_real_mc.shape != xi_gen_mc.shape or xi_real_mc.shape[1:] != (self.n_concepts,):
            raise ValueError(f"paired blocks have shapes {xi_real_mc.shape}, {xi_gen_mc.shape}")
        m = int(xi_real_mc.shape[0])
        if m == 0:
            return
        if self.seen + m > self.n_pairs:
            raise ValueError(f"more than the announced {self.n_pairs} pairs were streamed")
        drawn = None if pool is None else pool.submit(self._weights, m)
        gen, real = np.asarray(xi_gen_mc, np.float32), np.asarray(xi_real_mc, np.float32)
        diff = np.subtract(gen, real, out=scratch("paired_diff", gen.shape, np.float32))
        self.moments = self.moments.add(xi_real_mc, xi_gen_mc, entries)  # Σd, Σd², Σ|d|…
        weights_rm = self._weights(m) if drawn is None else drawn.result()
        if weights_rm is not None:
            self.resampled_rc.addmm_(weights_rm, torch.from_numpy(diff))
        self.seen += m

    def _weights(self, m: int) -> torch.Tensor | None:
        """The (B + P) × m resampling weights of the next block: bootstrap counts, signs."""
        weights = [self._bootstrap_counts(m)] if self.n_bootstrap else []
        if self.n_permutations:
            signs_pm = self.rng.integers(0, 2, size=(self.n_permutations, m), dtype=np.int8)
            weights.append(signs_pm.astype(np.float32) * 2.0 - 1.0)
        if not weights:
            return None
        return torch.from_numpy(np.concatenate(weights, axis=0).astype(np.float32))

    def _bootstrap_counts(self, m: int) -> np.ndarray:
        pairs_left = self.n_pairs - self.seen
        if pairs_left == m:
            in_block_b = self.draws_left_b.copy()
        else:
            in_block_b = self.rng.binomial(self.draws_left_b, m / pairs_left).astype(np.int64)
        self.draws_left_b -= in_block_b
        return self.rng.multinomial(in_block_b, np.full(m, 1.0 / m)).astype(np.float32)

    def finish(self, ci_level: float = 0.95) -> PairedDiffResult:
        if self.seen != self.n_pairs:
            raise ValueError(f"{self.seen} pairs were streamed, {self.n_pairs} were announced")
        n = self.n_pairs
        nan_k = np.full(self.n_concepts, np.nan)
        if n == 0:
            return PairedDiffResult(0, nan_k, nan_k, nan_k, nan_k, nan_k, nan_k, self.moments)
        mean_k, sd_k = self.moments.diff_mean_sd()
        sum_d_k, sum_d2_k = self.moments.sum_diff_k, self.moments.sum_diff2_k
        with np.errstate(divide="ignore", invalid="ignore"):
            effect_k = np.where(
                sd_k > 0, mean_k / np.where(sd_k > 0, sd_k, 1.0), np.sign(mean_k) * np.inf
            )
        effect_k = np.where(mean_k == 0, 0.0, effect_k)

        resampled = self.resampled_rc.numpy()
        abs_t_k = np.abs(sum_d_k)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            bound_k = np.where(
                sum_d2_k > 0,
                np.minimum(1.0, 2.0 * np.exp(-(abs_t_k**2) / (2.0 * sum_d2_k))),
                1.0,
            )
        low_k, high_k = nan_k.copy(), nan_k.copy()
        exceed_k = np.zeros(self.n_concepts, dtype=np.int64)
        tail = (1.0 - ci_level) / 2.0
        # float32 sums of the same numbers in another order: a tie must count as a tie.
        threshold_k = abs_t_k - 1e-5 * self.moments.sum_abs_diff_k
        for c0 in range(0, self.n_concepts, _COLUMN_CHUNK):
            cols = slice(c0, min(c0 + _COLUMN_CHUNK, self.n_concepts))
            if self.n_bootstrap:
                boot_means = resampled[: self.n_bootstrap, cols] / np.float32(n)
                low_k[cols], high_k[cols] = np.quantile(boot_means, [tail, 1.0 - tail], axis=0)
            if self.n_permutations:
                flips = np.abs(resampled[self.n_bootstrap :, cols])
                exceed_k[cols] = np.count_nonzero(flips >= threshold_k[None, cols], axis=0)
        if self.n_permutations:
            p_mc_k = ((1.0 + exceed_k) / (self.n_permutations + 1.0)).astype(np.float64)
            p_k = np.minimum(p_mc_k, bound_k)
        else:
            p_mc_k = nan_k
            p_k = bound_k
        return PairedDiffResult(n, mean_k, low_k, high_k, effect_k, p_k, p_mc_k, self.moments)

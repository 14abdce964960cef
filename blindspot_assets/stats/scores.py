"""The paper's per-concept scores (docs/method.md §6) and the multiple-testing correction.

This module is the one owner of δ: every table, test and report calls ``blindspot_scores``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def blindspot_scores(
    energy_gen_k: ArrayLike, energy_real_k: ArrayLike, temperature: float
) -> dict[str, F64]:
    """ΔE, δ and the relative difference of each concept k, exactly as in the paper.

    - ``delta_energy`` = E_k(G) − E_k(R)
    - ``delta`` = sigmoid(ΔE_k / T) = 1 / (1 + exp(−ΔE_k / T))
    - ``relative`` = ΔE_k / (E_k(G) + E_k(R)); a concept with no energy on either side
      (0 / 0) gets 0, i.e. "no difference".

    Computed in float64. ``exp`` overflowing to inf for a very negative ΔE gives δ = 0 exactly,
    the correct limit, so the plain formula is used as written.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    gen_k = np.asarray(energy_gen_k, dtype=np.float64)
    real_k = np.asarray(energy_real_k, dtype=np.float64)
    if gen_k.shape != real_k.shape:
        raise ValueError(f"energy shapes differ: gen {gen_k.shape} vs real {real_k.shape}")
    delta_energy_k = gen_k - real_k
    with np.errstate(over="ignore", under="ignore"):
        delta_k = 1.0 / (1.0 + np.exp(-delta_energy_k / temperature))
    total_k = gen_k + real_k
    safe_k = np.where(total_k == 0, 1.0, total_k)
    relative_k = np.where(total_k == 0, 0.0, delta_energy_k / safe_k)
    return {"delta_energy": delta_energy_k, "delta": delta_k, "relative": relative_k}


def benjamini_hochberg(p_values: ArrayLike) -> F64:
    """Benjamini–Hochberg q-values (step-up adjusted p-values), NaN p-values left as NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    p_ok = p[ok]
    order = np.argsort(p_ok, kind="stable")
    ranked = p_ok[order] * m / np.arange(1, m + 1)
    # q_(i) = min_{j >= i} p_(j) m / j, capped at 1.
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q_ok = np.empty(m)
    q_ok[order] = np.minimum(ranked, 1.0)
    q[ok] = q_ok
    return q

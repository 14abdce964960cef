"""A synthetic paired code set with planted blindspots, shared by the stats tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedCodes:
    image_ids: list[str]
    xi_real_nc: np.ndarray
    xi_gen_nc: np.ndarray
    gone: int  # big concept absent from every generation: δ far below 0.1
    doubled: int  # concept with twice the energy in generations: δ far above 0.9
    small_gone: int  # rare, weak concept absent from generations: δ ≈ 0.5 (DESIGN caution)
    unchanged: list[int]


def planted_codes(n: int = 400, c: int = 40, seed: int = 0) -> PlantedCodes:
    """Real ξ: concept k fires with probability p_k, Gamma(2, 3) energy when it fires.

    Generated ξ: an independent draw from the same law (the null for unchanged concepts), except
    concept 0 never fires, concept 1 fires with twice the energy, and concept 2 — a weak concept
    that fires in 15 % of images with ξ ≈ 0.1 — never fires.
    """
    rng = np.random.default_rng(seed)
    p_k = rng.uniform(0.1, 0.5, size=c)
    p_k[0], p_k[1] = 0.5, 0.5
    scale_k = np.full(c, 3.0)
    p_k[2], scale_k[2] = 0.15, 0.05

    def draw() -> np.ndarray:
        fires = rng.random((n, c)) < p_k
        return (fires * rng.gamma(2.0, scale_k, size=(n, c))).astype(np.float32)

    real, gen = draw(), draw()
    gen[:, 0] = 0.0
    gen[:, 1] *= 2.0
    gen[:, 2] = 0.0
    ids = [f"img{i:05d}" for i in range(n)]
    return PlantedCodes(ids, real, gen, 0, 1, 2, list(range(3, c)))

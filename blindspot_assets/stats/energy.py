"""Concept energy of a dataset (docs/method.md §5), accumulated over streamed row blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from blindspot_assets.stats.reading import iter_blocks, open_store, read_rows, select_rows
from blindspot_assets.stats.sparse_sums import Entries
from blindspot_assets.store.rowstore import RowStore

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


class EnergyAccumulator:
    """Running sums behind ``E_k = (1/N) Σ_images ξ_k`` and ``nb_fire_k``.

    Sums are float64 (ξ is stored as float32), so the energy is the formula to the last bit for
    data whose sums are exact in float64.
    """

    def __init__(self, n_concepts: int) -> None:
        self.n_concepts = n_concepts
        self.n_images = 0
        self.xi_sum_k: F64 = np.zeros(n_concepts, dtype=np.float64)
        # integer counts; float once a block of per-caption means (several samples) arrives
        self.nb_fire_k: I64 | F64 = np.zeros(n_concepts, dtype=np.int64)
        self.n_images_firing_k: I64 = np.zeros(n_concepts, dtype=np.int64)

    def update(
        self, xi_nc: np.ndarray, nfire_nc: np.ndarray | None = None, xi: Entries | None = None
    ) -> None:
        """Add a block; ``xi``: its non-zero entries, when the caller has them."""
        if xi_nc.ndim != 2 or xi_nc.shape[1] != self.n_concepts:
            raise ValueError(f"xi block has shape {xi_nc.shape}, expected (n, {self.n_concepts})")
        self.n_images += int(xi_nc.shape[0])
        xi = Entries.of(xi_nc) if xi is None else xi  # a few percent of the block
        self.xi_sum_k += xi.sum()
        self.n_images_firing_k += xi.count(xi.value > 0)
        if nfire_nc is not None and np.issubdtype(nfire_nc.dtype, np.floating):
            self.nb_fire_k = self.nb_fire_k + nfire_nc.sum(axis=0, dtype=np.float64)
        elif nfire_nc is not None:
            self.nb_fire_k = self.nb_fire_k + nfire_nc.sum(axis=0, dtype=np.int64)

    @property
    def energy_k(self) -> F64:
        """E_k; all zeros for an empty dataset (there is no energy to speak of)."""
        if self.n_images == 0:
            return np.zeros(self.n_concepts, dtype=np.float64)
        return self.xi_sum_k / self.n_images


def concept_energy(
    codes_path: str | Path | RowStore,
    rows: NDArray[np.bool_] | NDArray[np.integer] | None = None,
    block_rows: int = 512,
) -> tuple[F64, I64 | F64, int]:
    """``(energy_k, nb_fire_k, n_images)`` of one dataset's codes.

    ``energy_k`` = (1/N) Σ_images ξ_k with ξ_k = Σ_t z[t, k] the per-image energy stored in
    ``xi``; ``nb_fire_k`` = total number of non-zero codes of k over all tokens of all images
    (Σ of the stored per-image ``nfire``). ``rows``: ``None`` → the store's valid rows, else a
    bool mask or row indices. Streams ``block_rows`` rows at a time.
    """
    store = open_store(codes_path)
    rows_n = select_rows(store, rows)
    xi, nfire = store.array("xi"), store.array("nfire")
    acc = EnergyAccumulator(int(xi.shape[1]))
    for start, stop in iter_blocks(rows_n.size, block_rows):
        block_rows_n = rows_n[start:stop]
        acc.update(read_rows(xi, block_rows_n), read_rows(nfire, block_rows_n))
    return acc.energy_k, acc.nb_fire_k, acc.n_images

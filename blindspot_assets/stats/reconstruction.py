"""Does the concept vocabulary cover a dataset? The SAE's reconstruction of its tokens.

The blindspot scores compare energies of concepts the dictionary has; a model whose images hold
things the dictionary cannot express shows no blindspot for them — the energy is simply not
there on either side. So each dataset's reconstruction quality is reported beside its scores:

- ``r2``: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over all tokens of the valid images (x̄ the dataset's mean
  token), the SAE's R² on that dataset;
- ``energy_explained``: the mean over images of 1 − Σ_t‖x − x̂‖² / Σ_t‖x‖², the fraction of an
  image's energy the dictionary explains.

A generated set reconstructed much worse than the real one (R² lower by more than
``VOCABULARY_GAP``) has content the concepts cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blindspot_assets.stats.reading import iter_blocks, open_store, read_rows, select_rows
from blindspot_assets.store.rowstore import RowStore

VOCABULARY_GAP = 0.1  # R² of the real set minus R² of a generated set that deserves a warning


@dataclass(frozen=True)
class Reconstruction:
    n_images: int
    r2: float
    energy_explained: float


def reconstruction_quality(
    codes_path: str | Path | RowStore, block_rows: int = 1024
) -> Reconstruction:
    """Streamed over the valid rows of a codes store; NaN for a store written without the
    reconstruction arrays."""
    store = open_store(codes_path)
    if not store.has_array("recon_sse"):
        return Reconstruction(0, float("nan"), float("nan"))
    rows_n = select_rows(store, None)
    n_tokens_per_row = int(store.array("token_idx").shape[1])
    sse = sq = explained = 0.0
    total_d: np.ndarray | None = None
    for start, stop in iter_blocks(rows_n.size, block_rows):
        rows = rows_n[start:stop]
        sse_r = read_rows(store.array("recon_sse"), rows).astype(np.float64)
        sq_r = read_rows(store.array("token_sq"), rows).astype(np.float64)
        sum_rd = read_rows(store.array("token_sum"), rows).astype(np.float64)
        sse += float(sse_r.sum())
        sq += float(sq_r.sum())
        explained += float(np.sum(1.0 - sse_r / np.where(sq_r > 0, sq_r, 1.0)))
        total_d = sum_rd.sum(0) if total_d is None else total_d + sum_rd.sum(0)
    n = int(rows_n.size)
    if n == 0 or total_d is None:
        return Reconstruction(0, float("nan"), float("nan"))
    sst = sq - float(total_d @ total_d) / (n * n_tokens_per_row)
    return Reconstruction(n, 1.0 - sse / sst if sst > 0 else float("nan"), explained / n)

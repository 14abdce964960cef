"""A concept's top images, ranked as ``stats.top_images_by`` says.

- ``token_sum``: ξ_k, the concept's energy summed over every token of the image (CLS, registers
  and patches) — what the statistics use.
- ``patch_mean``: the mean of z[t, k] over the patch tokens only (256 for ViT-B/14 at 224),
  what the paper's authors rank by: a concept that lives on the CLS or register tokens does not
  pull an image up. Read from the sparse token codes (``token_idx`` / ``token_val``, float16);
  exact unless a token had more than ``sae.k_max_store`` active concepts (the codes metadata
  counts those as ``tokens_over_k_max``), where its smallest codes are missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from blindspot_assets.stats.reading import (
    iter_blocks,
    n_concepts_of,
    open_store,
    read_rows,
    select_rows,
)
from blindspot_assets.stats.sparse_sums import scratch
from blindspot_assets.store.layout import TokenLayout
from blindspot_assets.store.rowstore import RowStore

RANKINGS = ("patch_mean", "token_sum")


def patch_mean_block(
    token_idx: np.ndarray, token_val: np.ndarray, first_patch: int, c: int
) -> np.ndarray:
    """(R, c) mean over patch tokens of z[t, k] from sparse codes (R, T, k_max)."""
    idx = torch.from_numpy(np.asarray(token_idx[:, first_patch:], np.int64))
    val = torch.from_numpy(np.asarray(token_val[:, first_patch:], np.float32))
    n_patches = max(int(idx.shape[1]), 1)
    idx, val = idx.reshape(idx.shape[0], -1), val.reshape(val.shape[0], -1)
    empty = idx < 0
    dense = torch.zeros(idx.shape[0], c, dtype=torch.float32)
    dense.scatter_add_(1, idx.masked_fill(empty, 0), val.masked_fill(empty, 0.0))
    return (dense / n_patches).numpy()


def top_images_by_patch_mean(
    codes_path: str | Path | RowStore, k: int, block_rows: int = 256
) -> pl.DataFrame:
    """Like ``top_images_per_concept`` with ``score`` = mean of z[t, k] over patch tokens."""
    store = open_store(codes_path)
    c = n_concepts_of(store)
    t_idx, t_val = store.array("token_idx"), store.array("token_val")
    layout = TokenLayout.infer(int(t_idx.shape[1]), dict(store.attrs))
    rows_n = select_rows(store, None)
    acc = TopKAccumulator(c, k)
    for start, stop in iter_blocks(rows_n.size, block_rows):
        rows = rows_n[start:stop]
        block = patch_mean_block(
            read_rows(t_idx, rows), read_rows(t_val, rows), layout.first_patch, c
        )
        acc.update(block, rows)
    ids = np.asarray(store.image_ids(), dtype=object)
    values_kc, rows_kc = acc.values_kc.numpy(), acc.rows_kc.numpy()
    rank_kc = np.broadcast_to(np.arange(1, values_kc.shape[0] + 1)[:, None], values_kc.shape)
    keep = values_kc > 0
    concept_kc = np.broadcast_to(np.arange(c)[None, :], values_kc.shape)
    return pl.DataFrame(
        {
            "concept": concept_kc[keep].astype(np.int32),
            "image_id": pl.Series(ids[rows_kc[keep]].tolist(), dtype=pl.String),
            "rank": rank_kc[keep].astype(np.int32),
            "score": values_kc[keep].astype(np.float64),
        }
    ).sort(["concept", "rank"])


def top_images(codes_path: str | Path | RowStore, k: int, by: str = "token_sum") -> pl.DataFrame:
    """The k top images per concept, ranked ``by`` (see the module doc)."""
    if by == "token_sum":
        return top_images_per_concept(codes_path, k)
    if by == "patch_mean":
        return top_images_by_patch_mean(codes_path, k)
    raise ValueError(f"top_images_by must be one of {list(RANKINGS)}, got {by!r}")


class TopKAccumulator:
    """Keeps, per concept, the k largest scores seen so far and the row they came from."""

    def __init__(self, n_concepts: int, k: int) -> None:
        self.k = k
        self.values_kc = torch.full((0, n_concepts), -torch.inf, dtype=torch.float32)
        self.rows_kc = torch.zeros((0, n_concepts), dtype=torch.int64)

    def update(self, scores_nc: np.ndarray, rows_n: np.ndarray) -> None:
        scores = np.asarray(scores_nc, dtype=np.float32)
        rows = torch.from_numpy(np.asarray(rows_n, dtype=np.int64))
        if self.values_kc.shape[0] < self.k:
            self._merge(torch.from_numpy(scores), rows, slice(None))
            return
        # Only concepts where the block beats the k-th best so far can change; once many
        # rows are seen that is a shrinking share of them (~k·m / rows seen).
        floor_c = self.values_kc[-1].numpy()
        beats = np.greater(scores, floor_c[None, :], out=scratch("top_k", scores.shape, bool))
        cols = np.flatnonzero(beats.any(axis=0))
        if cols.size:
            self._merge(torch.from_numpy(scores[:, cols]), rows, torch.from_numpy(cols))

    def _merge(self, scores: torch.Tensor, rows: torch.Tensor, cols: slice | torch.Tensor) -> None:
        """The k best of the kept values and the block's, for the concepts ``cols``."""
        # the block's own top k first, so the merge is 2k × c whatever the block size
        block_values, block_idx = torch.topk(scores, min(self.k, scores.shape[0]), dim=0)
        values = torch.cat([self.values_kc[:, cols], block_values])
        all_rows = torch.cat([self.rows_kc[:, cols], rows[block_idx]])
        top_values, idx = torch.topk(values, min(self.k, values.shape[0]), dim=0)
        if isinstance(cols, slice):
            self.values_kc, self.rows_kc = top_values, torch.gather(all_rows, 0, idx)
        else:
            self.values_kc[:, cols] = top_values
            self.rows_kc[:, cols] = torch.gather(all_rows, 0, idx)


def top_images_per_concept(
    codes_path: str | Path | RowStore,
    k: int,
    concepts: list[int] | np.ndarray | None = None,
    block_rows: int = 512,
) -> pl.DataFrame:
    """The k images with the largest ξ_k per concept (valid rows only, scores > 0).

    Columns: ``concept``, ``image_id``, ``rank`` (1 = highest ξ_k), ``score`` (ξ_k). Streams
    ``block_rows`` rows at a time; ``concepts`` restricts the concepts (default: all).
    """
    store = open_store(codes_path)
    n_concepts = n_concepts_of(store)
    concept_c = (
        np.arange(n_concepts, dtype=np.int64)
        if concepts is None
        else np.asarray(concepts, dtype=np.int64).reshape(-1)
    )
    rows_n = select_rows(store, None)
    xi = store.array("xi")
    acc = TopKAccumulator(concept_c.size, k)
    whole = concepts is None
    for start, stop in iter_blocks(rows_n.size, block_rows):
        block = read_rows(xi, rows_n[start:stop])
        acc.update(block if whole else block[:, concept_c], rows_n[start:stop])
    ids = np.asarray(store.image_ids(), dtype=object)
    values_kc, rows_kc = acc.values_kc.numpy(), acc.rows_kc.numpy()
    rank_kc = np.broadcast_to(np.arange(1, values_kc.shape[0] + 1)[:, None], values_kc.shape)
    keep = values_kc > 0
    concept_kc = np.broadcast_to(concept_c[None, :], values_kc.shape)
    df = pl.DataFrame(
        {
            "concept": concept_kc[keep].astype(np.int32),
            "image_id": pl.Series(ids[rows_kc[keep]].tolist(), dtype=pl.String),
            "rank": rank_kc[keep].astype(np.int32),
            "score": values_kc[keep].astype(np.float64),
        }
    )
    return df.sort(["concept", "rank"])

"""Memorisation candidates: generated images that sit closer to a real image than real images
sit to each other, in DINOv2 image-level (CLS token) features.

Distances are cosine distances ``1 − cos(f, g)`` of CLS features. The threshold is calibrated
on the real set: the ``calibration_quantile`` quantile of real images' distances to their
nearest *other* real image. A generated image whose nearest real image is closer than that is a
candidate; ``is_own_pair`` says whether that real image is the one whose caption prompted it
(a near-copy of its own pair is a template; of another image, a reproduced training image).
Nearest neighbours are found block by block with a torch matmul; reference features are held
in memory only when they fit in ``max_cached_bytes`` (float32), else re-read per query block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray

from blindspot_assets.stats.reading import iter_blocks, open_store, read_rows, select_rows
from blindspot_assets.store.rowstore import RowStore

I64 = NDArray[np.int64]


class _ImageFeatures:
    """L2-normalised image-level features (one token of ``tokens``) of a store's valid rows."""

    def __init__(self, store: RowStore, token: int, block_rows: int, max_cached_bytes: int) -> None:
        self.store = store
        self.token = token
        self.block_rows = block_rows
        self.rows_n = select_rows(store, None)
        self.ids = store.image_ids()
        tokens = store.array("tokens")
        self.dim = int(tokens.shape[2])
        self._cache: list[torch.Tensor] | None = None
        if self.rows_n.size * self.dim * 4 <= max_cached_bytes:
            self._cache = [f for _, f in self._read()]

    def _read(self) -> Iterator[tuple[I64, torch.Tensor]]:
        tokens = self.store.array("tokens")
        for start, stop in iter_blocks(self.rows_n.size, self.block_rows):
            rows = self.rows_n[start:stop]
            feats = read_rows(tokens, rows, (self.token, slice(None))).astype(np.float32)
            feats_t = torch.from_numpy(feats)
            yield rows, torch.nn.functional.normalize(feats_t, dim=1)

    def blocks(self) -> Iterator[tuple[I64, torch.Tensor]]:
        if self._cache is None:
            yield from self._read()
            return
        for (start, stop), feats in zip(
            iter_blocks(self.rows_n.size, self.block_rows), self._cache, strict=True
        ):
            yield self.rows_n[start:stop], feats


def _nearest(
    queries: _ImageFeatures, refs: _ImageFeatures, query_rows: I64 | None, exclude_self: bool
) -> tuple[I64, np.ndarray, I64]:
    """For each query row: ``(query_row, distance to nearest ref, nearest ref row)``."""
    out_q, out_d, out_r = [], [], []
    for q_rows, q_feats in queries.blocks():
        if query_rows is not None:
            keep = np.isin(q_rows, query_rows)
            if not keep.any():
                continue
            q_rows, q_feats = q_rows[keep], q_feats[torch.from_numpy(keep)]
        best_sim = torch.full((q_rows.size,), -torch.inf)
        best_row = torch.full((q_rows.size,), -1, dtype=torch.int64)
        for r_rows, r_feats in refs.blocks():
            sim_qr = q_feats @ r_feats.T
            if exclude_self:
                same = torch.from_numpy(q_rows[:, None] == r_rows[None, :])
                sim_qr.masked_fill_(same, -torch.inf)
            sim, idx = sim_qr.max(dim=1)
            better = sim > best_sim
            best_sim = torch.where(better, sim, best_sim)
            best_row = torch.where(better, torch.from_numpy(r_rows)[idx], best_row)
        out_q.append(q_rows)
        out_d.append((1.0 - best_sim.clamp(-1.0, 1.0)).numpy().astype(np.float64))
        out_r.append(best_row.numpy())
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(out_q), np.concatenate(out_d), np.concatenate(out_r)


def real_nn_threshold(
    real: _ImageFeatures, calibration_quantile: float, calibration_size: int, seed: int
) -> tuple[float, np.ndarray]:
    """The calibration: quantile of real→nearest-other-real distances (over a seeded sample)."""
    rows = real.rows_n
    if rows.size > calibration_size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, calibration_size, replace=False))
    _, dist, _ = _nearest(real, real, rows, exclude_self=True)
    dist = dist[np.isfinite(dist) & (dist <= 2.0)]
    if dist.size == 0:
        raise ValueError("memorisation threshold needs at least two valid real images")
    return float(np.quantile(dist, calibration_quantile)), dist


def memorization_candidates(
    real_features: str | Path | RowStore,
    gen_features: str | Path | RowStore,
    calibration_quantile: float = 0.001,
    calibration_size: int = 5000,
    token: int = 0,
    block_rows: int = 2048,
    max_cached_bytes: int = 1 << 30,
    seed: int = 0,
    all_rows: bool = False,
) -> pl.DataFrame:
    """Generated images closer to a real image than the calibrated threshold (see module doc).

    Columns: ``gen_image_id``, ``nearest_real_id``, ``distance`` (cosine distance of CLS
    features), ``threshold``, ``is_own_pair``, ``is_candidate``; sorted by distance. Only the
    candidates unless ``all_rows`` (every valid generated image, e.g. for a histogram).
    """
    real = _ImageFeatures(open_store(real_features), token, block_rows, max_cached_bytes)
    gen = _ImageFeatures(open_store(gen_features), token, block_rows, max_cached_bytes=0)
    threshold, _ = real_nn_threshold(real, calibration_quantile, calibration_size, seed)
    gen_rows, dist, real_rows = _nearest(gen, real, None, exclude_self=False)
    gen_ids = [gen.ids[int(r)] for r in gen_rows]
    real_ids = [real.ids[int(r)] if r >= 0 else "" for r in real_rows]
    df = pl.DataFrame(
        {
            "gen_image_id": pl.Series(gen_ids, dtype=pl.String),
            "nearest_real_id": pl.Series(real_ids, dtype=pl.String),
            "distance": dist,
            "threshold": np.full(dist.size, threshold),
        }
    ).with_columns(
        is_own_pair=pl.col("gen_image_id") == pl.col("nearest_real_id"),
        is_candidate=pl.col("distance") < pl.col("threshold"),
    )
    if not all_rows:
        df = df.filter("is_candidate")
    return df.sort("distance")

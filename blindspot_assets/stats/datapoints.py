"""Datapoint level (docs/method.md §7): how each generated image differs from its real pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from blindspot_assets.stats.reading import iter_paired_blocks, open_store, pair_rows
from blindspot_assets.store.images import split_sample_id
from blindspot_assets.store.rowstore import RowStore

# the columns of ``datapoint_deltas`` (see compute_datapoint_deltas)
DATAPOINT_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "image_id": pl.String, "sample": pl.Int32, "gen_image_id": pl.String, "l2": pl.Float64,
    "norm_real": pl.Float64, "norm_gen": pl.Float64,
    "l2_relative": pl.Float64,
    "missing_concepts": pl.List(pl.Int32), "missing_values": pl.List(pl.Float64),
    "added_concepts": pl.List(pl.Int32), "added_values": pl.List(pl.Float64),
}  # fmt: skip


def _top_signed(
    d_mc: torch.Tensor, top_n: int, largest: bool
) -> tuple[list[list[int]], list[list[float]]]:
    """Per row, up to ``top_n`` concepts with the largest (or most negative) non-zero d."""
    k = min(top_n, d_mc.shape[1])
    values, idx = torch.topk(d_mc, k, dim=1, largest=largest, sorted=True)
    keep = values > 0 if largest else values < 0
    concepts, amounts = [], []
    for row_v, row_i, row_keep in zip(values.tolist(), idx.tolist(), keep.tolist(), strict=True):
        concepts.append([i for i, ok in zip(row_i, row_keep, strict=True) if ok])
        amounts.append([v for v, ok in zip(row_v, row_keep, strict=True) if ok])
    return concepts, amounts


def compute_datapoint_deltas(
    real_codes: str | Path | RowStore,
    gen_codes: str | Path | RowStore,
    top_n: int = 5,
    block_rows: int = 512,
) -> pl.DataFrame:
    """One row per (real, generated) pair: per generated *sample* when a model makes several
    images per caption (captions paired as in ``compute_concept_stats``, never averaged here).

    Columns: ``image_id`` (the real image, the caption's id); ``sample`` (0 … k − 1) and
    ``gen_image_id`` (the generated image: ``image_id`` itself for sample 0); ``l2`` =
    ‖ξ(x') − ξ(x)‖₂; ``norm_real`` = ‖ξ(x)‖₂, ``norm_gen`` =
    ‖ξ(x')‖₂; ``l2_relative`` = l2 / (norm_real + norm_gen) (0 when both are 0; in [0, 1]);
    ``missing_concepts`` / ``missing_values``: the ``top_n`` concepts with the most negative
    ξ_k(x') − ξ_k(x) (what the model left out), most missing first, values < 0;
    ``added_concepts`` / ``added_values``: likewise the largest positive differences.
    """
    real, gen = open_store(real_codes), open_store(gen_codes)
    pairing = pair_rows(real, gen).per_sample()
    gen_ids = gen.image_ids()
    parts = []
    for start, stop, real_block, gen_block in iter_paired_blocks(
        real, gen, pairing, ("xi",), block_rows
    ):
        xi_real = torch.from_numpy(real_block["xi"].astype(np.float32, copy=False))
        xi_gen = torch.from_numpy(gen_block["xi"].astype(np.float32, copy=False))
        d_mc = xi_gen - xi_real
        # float32 norms: a float64 cast would copy the whole block
        l2 = torch.linalg.vector_norm(d_mc, dim=1).numpy().astype(np.float64)
        norm_real = torch.linalg.vector_norm(xi_real, dim=1).numpy().astype(np.float64)
        norm_gen = torch.linalg.vector_norm(xi_gen, dim=1).numpy().astype(np.float64)
        total = norm_real + norm_gen
        missing_c, missing_v = _top_signed(d_mc, top_n, largest=False)
        added_c, added_v = _top_signed(d_mc, top_n, largest=True)
        sample_ids = [gen_ids[int(r)] for r in pairing.gen_rows[start:stop]]
        columns = {
            "image_id": pairing.image_ids[start:stop],
            "sample": [split_sample_id(i)[1] for i in sample_ids],
            "gen_image_id": sample_ids,
            "l2": l2,
            "norm_real": norm_real,
            "norm_gen": norm_gen,
            "l2_relative": np.where(total > 0, l2 / np.where(total > 0, total, 1.0), 0.0),
            "missing_concepts": missing_c,
            "missing_values": missing_v,
            "added_concepts": added_c,
            "added_values": added_v,
        }
        parts.append(pl.DataFrame(columns, schema=DATAPOINT_SCHEMA))
    return pl.concat(parts) if parts else pl.DataFrame(schema=DATAPOINT_SCHEMA)

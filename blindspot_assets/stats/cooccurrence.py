"""Concept co-occurrence: which concepts fire together (ZᵀZ of the paper's authors), top partners.

Over ``tokens`` (the default), Z is the (tokens × c) matrix of token codes z[t, k], read from the
sparse codes of the codes store (``token_idx`` / ``token_val``: exact unless a token had more
than ``sae.k_max_store`` active concepts); over ``images``, Z is the (images × c) matrix of
per-image energies ξ. For each pair of concepts (a, b):

- ``cooccurrence`` C[a, b] = Σ_rows Z[:, a] Z[:, b] (the entry of ZᵀZ),
- ``cosine`` = C[a, b] / √(C[a, a] C[b, b]): co-activation normalised by each concept's own
  energy, so that a concept present everywhere is not everyone's top partner,
- ``n_both``: rows (tokens or images) where both fire.

Each concept keeps its ``top`` partners by cosine. The c × c matrix is never held: one pass over
the store computes the diagonal, then each pass accumulates the rows of ``block`` concepts,
(block × c) float64 sums and int32 counts — ``block × c × 12`` bytes (2048 × 32,000: 786 MB) —
keeps their top partners and drops them. Passes: 1 + ⌈c / block⌉, each a full read of the codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from blindspot_assets.stats.reading import (
    I64,
    iter_blocks,
    n_concepts_of,
    open_store,
    read_rows,
    select_rows,
)
from blindspot_assets.store.rowstore import RowStore

OVER = ("tokens", "images")
BYTES_PER_CELL = 12  # float64 sum + int32 count per (concept in block, partner)
TOPK_ROWS = 256  # concepts ranked at a time (temporaries: TOPK_ROWS × c float64)


@dataclass(frozen=True)
class Cooccurrence:
    """The table and what it took: ``passes`` over the store, ``accumulator_bytes`` (the
    largest block accumulator held), ``rows`` read per pass."""

    table: pl.DataFrame
    passes: int
    accumulator_bytes: int
    n_rows: int


def accumulator_bytes(block: int, n_concepts: int) -> int:
    """Memory of one pass's accumulators (the bound the ``block`` setting buys)."""
    return min(block, n_concepts) * n_concepts * BYTES_PER_CELL


def _token_block(store: RowStore, rows: I64) -> tuple[np.ndarray, np.ndarray]:
    """Sparse token codes of ``rows`` as (tokens, k_max) index and float32 value arrays."""
    idx = read_rows(store.array("token_idx"), rows)
    val = read_rows(store.array("token_val"), rows)
    k = idx.shape[-1]
    idx = np.asarray(idx, np.int64).reshape(-1, k)
    val = np.asarray(val, np.float32).reshape(-1, k)
    val = np.where(idx >= 0, val, 0.0).astype(np.float32)
    return idx, val


def _diagonal(
    store: RowStore, rows_n: I64, over: str, c: int, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_rows Z[:, k]² and the number of rows where concept k fires."""
    sq = torch.zeros(c, dtype=torch.float64)
    fires = torch.zeros(c, dtype=torch.int64)
    for start, stop in iter_blocks(rows_n.size, block_rows):
        rows = rows_n[start:stop]
        if over == "tokens":
            idx, val = _token_block(store, rows)
            ok = (idx >= 0) & (val != 0)
            k_t = torch.from_numpy(idx[ok])
            v_t = torch.from_numpy(val[ok].astype(np.float64))
            sq.index_add_(0, k_t, v_t * v_t)
            fires.index_add_(0, k_t, torch.ones_like(k_t))
        else:
            xi = torch.from_numpy(np.asarray(read_rows(store.array("xi"), rows), np.float64))
            sq += (xi * xi).sum(0)
            fires += (xi != 0).sum(0)
    return sq.numpy(), fires.numpy()


def _accumulate_tokens(
    store: RowStore, rows: I64, lo: int, hi: int, c: int, sums: torch.Tensor, counts: torch.Tensor
) -> None:
    """Add the token pairs (a in [lo, hi), any b) of ``rows`` to the block accumulators."""
    idx, val = _token_block(store, rows)
    in_block = (idx >= lo) & (idx < hi) & (val != 0)
    tok, slot = np.nonzero(in_block)
    if tok.size == 0:
        return
    a = idx[tok, slot] - lo
    partners, partner_val = idx[tok], val[tok]  # (P, k_max): every code of those tokens
    ok = (partners >= 0) & (partner_val != 0)
    flat = (a[:, None] * c + partners)[ok]
    weight = (val[tok, slot][:, None].astype(np.float64) * partner_val)[ok]
    flat_t = torch.from_numpy(flat)
    sums.view(-1).index_add_(0, flat_t, torch.from_numpy(weight))
    counts.view(-1).index_add_(0, flat_t, torch.ones(flat.size, dtype=torch.int32))


def _accumulate_images(
    store: RowStore, rows: I64, lo: int, hi: int, sums: torch.Tensor, counts: torch.Tensor
) -> None:
    """Add ξ[:, lo:hi]ᵀ ξ of ``rows`` (float32 products of one row block, summed in float64)."""
    xi = torch.from_numpy(np.asarray(read_rows(store.array("xi"), rows), np.float32))
    sums.add_(xi[:, lo:hi].T @ xi)  # float32 products, added into the float64 sums
    fired = (xi != 0).float()
    counts += (fired[:, lo:hi].T @ fired).int()  # whole numbers below 2^24: exact in float32


def compute_cooccurrence(
    codes_path: str | Path | RowStore,
    *,
    over: str = "tokens",
    top: int = 10,
    block: int = 2048,
    block_rows: int = 64,
    rows: np.ndarray | None = None,
) -> Cooccurrence:
    """Each concept's ``top`` co-occurrence partners (see the module doc), streamed.

    ``block``: concepts per pass (memory ``block × c × 12`` bytes); ``block_rows``: images read
    at a time; ``rows``: a row mask or indices (default: every valid row). Columns: ``concept``,
    ``rank`` (1 = highest cosine), ``partner``, ``cosine``, ``cooccurrence``, ``n_both``,
    ``fires`` and ``partner_fires`` (rows where each fires), ``over``. Concepts that never fire
    have no rows; partners with no co-activation are not listed.
    """
    if over not in OVER:
        raise ValueError(f"over must be one of {list(OVER)}, got {over!r}")
    if top < 1 or block < 1 or block_rows < 1:
        raise ValueError(f"top, block and block_rows must be ≥ 1, got {top}, {block}, {block_rows}")
    store = open_store(codes_path)
    c = n_concepts_of(store)
    rows_n = select_rows(store, rows)
    sq, fires = _diagonal(store, rows_n, over, c, block_rows)
    norm = torch.from_numpy(np.sqrt(sq))
    block = min(block, c)
    k = min(top, max(c - 1, 1))
    frames = []
    passes = 1
    # numpy-owned (visible to tracemalloc), updated in place through torch views; one pair for
    # every pass (zeroed, not allocated again: a fresh 786 MB array costs seconds of page faults)
    sums_buffer = counts_buffer = None
    for lo, hi in iter_blocks(c, block):
        if not fires[lo:hi].any():
            continue  # no concept of this block fires: nothing to accumulate
        passes += 1
        if sums_buffer is None or counts_buffer is None:
            sums_buffer = torch.from_numpy(np.zeros((block, c), np.float64))
            counts_buffer = torch.from_numpy(np.zeros((block, c), np.int32))
        sums, counts = sums_buffer[: hi - lo].zero_(), counts_buffer[: hi - lo].zero_()
        for start, stop in iter_blocks(rows_n.size, block_rows):
            if over == "tokens":
                _accumulate_tokens(store, rows_n[start:stop], lo, hi, c, sums, counts)
            else:
                _accumulate_images(store, rows_n[start:stop], lo, hi, sums, counts)
        for sub_lo, sub_hi in iter_blocks(hi - lo, TOPK_ROWS):  # bounded temporaries
            frames.append(
                _top_partners(
                    sums[sub_lo:sub_hi], counts[sub_lo:sub_hi], norm, lo + sub_lo, k, fires
                )
            )
    del sums_buffer, counts_buffer
    table = pl.concat(frames) if frames else _empty()
    table = table.with_columns(pl.lit(over).alias("over")).sort(["concept", "rank"])
    return Cooccurrence(table, passes, accumulator_bytes(block, c), int(rows_n.size))


def _top_partners(
    sums: torch.Tensor,
    counts: torch.Tensor,
    norm: torch.Tensor,
    lo: int,
    k: int,
    fires: np.ndarray,
) -> pl.DataFrame:
    b, c = sums.shape
    # two (b, c) temporaries, not seven: a zero norm comes with zero sums, which the last step
    # marks -1 (no co-activation) whatever the division gave
    cosine = norm[lo : lo + b, None] * norm[None, :]
    torch.div(sums, cosine.clamp_min_(1e-300), out=cosine)
    own = torch.arange(b)
    cosine[own, own + lo] = 0.0  # a concept is not its own partner
    cosine.masked_fill_(~(sums > 0), -1.0)
    values, partners = torch.topk(cosine, min(k, c), dim=1)
    keep = (values > 0).numpy()
    concept = np.broadcast_to(np.arange(lo, lo + b)[:, None], keep.shape)[keep]
    rank = np.broadcast_to(np.arange(1, keep.shape[1] + 1)[None, :], keep.shape)[keep]
    partner = partners.numpy()[keep]
    return pl.DataFrame(
        {
            "concept": concept.astype(np.int32),
            "rank": rank.astype(np.int32),
            "partner": partner.astype(np.int32),
            "cosine": values.numpy()[keep].astype(np.float64),
            "cooccurrence": torch.gather(sums, 1, partners).numpy()[keep],
            "n_both": torch.gather(counts, 1, partners).numpy()[keep].astype(np.int64),
            "fires": fires[concept].astype(np.int64),
            "partner_fires": fires[partner].astype(np.int64),
        }
    )


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "concept": pl.Int32,
            "rank": pl.Int32,
            "partner": pl.Int32,
            "cosine": pl.Float64,
            "cooccurrence": pl.Float64,
            "n_both": pl.Int64,
            "fires": pl.Int64,
            "partner_fires": pl.Int64,
        }
    )

"""Streaming reads of code and feature row stores, and the pairing of real and generated rows.

Only row *indices* and image ids are held whole; array data is read block by block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray

from blindspot_assets.store.rowstore import RowStore

I64 = NDArray[np.int64]


def open_store(store: RowStore | str | Path) -> RowStore:
    return store if isinstance(store, RowStore) else RowStore.open(store)


def select_rows(store: RowStore, rows: NDArray[np.bool_] | NDArray[np.integer] | None) -> I64:
    """Sorted row indices: ``None`` → every valid row; a bool mask or index array → those rows."""
    if rows is None:
        return np.flatnonzero(store.valid()).astype(np.int64)
    arr = np.asarray(rows)
    if arr.dtype == bool:
        if arr.shape != (store.n_rows,):
            raise ValueError(f"row mask has shape {arr.shape}, store has {store.n_rows} rows")
        return np.flatnonzero(arr).astype(np.int64)
    idx = np.unique(arr.astype(np.int64))
    if idx.size and (idx[0] < 0 or idx[-1] >= store.n_rows):
        raise ValueError(f"row indices out of range [0, {store.n_rows})")
    return idx


def read_rows(arr: zarr.Array, rows_n: I64, selection: tuple[slice | int, ...] = ()) -> np.ndarray:
    """``arr[rows_n, *selection]`` reading as few chunks as possible.

    A contiguous-enough set of rows is read as one slice (the usual case: generated stores follow
    the real store's order); scattered rows use Zarr's orthogonal indexing.
    """
    if rows_n.size == 0:
        shape = arr[0:0, *selection].shape if selection else (0, *arr.shape[1:])
        return np.zeros(shape, dtype=arr.dtype)
    lo, hi = int(rows_n.min()), int(rows_n.max()) + 1
    chunk = int(arr.chunks[0])
    if hi - lo <= 2 * rows_n.size + chunk:
        block = np.asarray(arr[lo:hi, *selection]) if selection else np.asarray(arr[lo:hi])
        if block.shape[0] == rows_n.size and (np.diff(rows_n) == 1).all():
            return block  # already the rows asked for, in order: no copy
        return block[rows_n - lo]
    sel = (rows_n, *selection) if selection else (rows_n,)
    return np.asarray(arr.oindex[sel])


def iter_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


@dataclass(frozen=True)
class Pairing:
    """Real row ``real_rows[i]`` and generated row ``gen_rows[i]`` share ``image_ids[i]``.

    Pairing rule: a generated image carries the image id of the real image whose caption prompted
    it; a pair is kept when both rows are valid (``RowStore.valid()``: written and usable). Pairs
    are ordered by real row.
    """

    image_ids: list[str]
    real_rows: I64
    gen_rows: I64
    n_real_valid: int
    n_gen_valid: int

    @property
    def n_pairs(self) -> int:
        return int(self.real_rows.size)


def valid_index(store: RowStore, what: str) -> dict[str, int]:
    ids = store.image_ids()
    valid = store.valid()
    index: dict[str, int] = {}
    for row in np.flatnonzero(valid):
        image_id = ids[int(row)]
        if image_id in index:
            raise ValueError(
                f"{what} row store has image id {image_id!r} on rows {index[image_id]} and {row}; "
                "image ids must be unique per dataset (re-materialise the codes)"
            )
        index[image_id] = int(row)
    return index


def pair_rows(real: RowStore, gen: RowStore) -> Pairing:
    """Pair the valid rows of a real and a generated store by image id (see ``Pairing``)."""
    real_index = valid_index(real, "real")
    gen_index = valid_index(gen, "generated")
    common = sorted(set(real_index) & set(gen_index), key=real_index.__getitem__)
    return Pairing(
        image_ids=common,
        real_rows=np.asarray([real_index[i] for i in common], dtype=np.int64),
        gen_rows=np.asarray([gen_index[i] for i in common], dtype=np.int64),
        n_real_valid=len(real_index),
        n_gen_valid=len(gen_index),
    )


def iter_paired_blocks(
    real: RowStore,
    gen: RowStore,
    pairing: Pairing,
    arrays: Sequence[str],
    block_rows: int,
) -> Iterator[tuple[int, int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yield ``(start, stop, real_arrays, gen_arrays)`` for pairs ``start:stop``."""
    for start, stop in iter_blocks(pairing.n_pairs, block_rows):
        real_rows = pairing.real_rows[start:stop]
        gen_rows = pairing.gen_rows[start:stop]
        yield (
            start,
            stop,
            {name: read_rows(real.array(name), real_rows) for name in arrays},
            {name: read_rows(gen.array(name), gen_rows) for name in arrays},
        )


def n_concepts_of(store: RowStore) -> int:
    return int(store.array("xi").shape[1])

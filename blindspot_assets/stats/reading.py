"""Streaming reads of code and feature row stores, and the pairing of real and generated rows.

Only row *indices* and image ids are held whole; array data is read block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray

from blindspot_assets.store.images import caption_of, split_sample_id
from blindspot_assets.store.rowstore import RowStore

I64 = NDArray[np.int64]
Arrays = dict[str, np.ndarray]
PerImage = Callable[[Arrays], Arrays]


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
    it (sample s ≥ 1 of a caption: ``<id>~s<s>``, ``store.images.sample_image_id``); a pair is
    one caption, kept when its real row and at least one of its generated samples are valid
    (``RowStore.valid()``: written and usable). Pairs are ordered by real row.

    With several samples per caption, ``gen_samples[i]`` holds the valid generated rows of
    caption i in sample order, padded with −1 (``gen_rows[i]`` is its first); the paired blocks
    then give each caption's mean over its samples. ``real_samples`` likewise, for a pairing of
    two generated sets. None: one row per caption on that side.
    """

    image_ids: list[str]
    real_rows: I64
    gen_rows: I64
    n_real_valid: int
    n_gen_valid: int
    gen_samples: I64 | None = None
    real_samples: I64 | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.real_rows.size)

    def per_sample(self) -> Pairing:
        """One pair per (caption, valid generated sample), captions in order, samples in order
        within each (the pairing itself with one sample per caption)."""
        if self.gen_samples is None:
            return self
        caption, sample = np.nonzero(self.gen_samples >= 0)
        return Pairing(
            image_ids=[self.image_ids[int(i)] for i in caption],
            real_rows=self.real_rows[caption],
            gen_rows=self.gen_samples[caption, sample],
            n_real_valid=self.n_real_valid,
            n_gen_valid=self.n_gen_valid,
        )

    def keep(self, mask: NDArray[np.bool_]) -> Pairing:
        """The pairs where ``mask`` holds."""
        return Pairing(
            image_ids=[i for i, k in zip(self.image_ids, mask, strict=True) if k],
            real_rows=self.real_rows[mask],
            gen_rows=self.gen_rows[mask],
            n_real_valid=self.n_real_valid,
            n_gen_valid=self.n_gen_valid,
            gen_samples=None if self.gen_samples is None else self.gen_samples[mask],
            real_samples=None if self.real_samples is None else self.real_samples[mask],
        )


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


def sample_groups(
    store: RowStore, what: str, real_ids: Mapping[str, int] | None = None
) -> dict[str, list[int]]:
    """caption id → the valid rows of its samples, in sample order. A generated id is resolved
    against ``real_ids`` when given (an id that is a real id is its sample 0), else by its
    sample suffix; an id with no real partner is left out."""
    index = valid_index(store, what)
    found: dict[str, list[tuple[int, int]]] = {}
    for image_id, row in index.items():
        got = caption_of(image_id, real_ids) if real_ids is not None else split_sample_id(image_id)
        if got is not None:
            found.setdefault(got[0], []).append((got[1], row))
    return {caption: [row for _, row in sorted(rows)] for caption, rows in found.items()}


def samples_matrix(groups: Sequence[list[int]]) -> tuple[I64, I64 | None]:
    """First row of each group, and the (n, k_max) rows padded with −1 (None: one row each)."""
    first = np.asarray([g[0] for g in groups], dtype=np.int64)
    width = max((len(g) for g in groups), default=1)
    if width == 1:
        return first, None
    matrix = np.full((len(groups), width), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        matrix[i, : len(g)] = g
    return first, matrix


def pair_rows(real: RowStore, gen: RowStore) -> Pairing:
    """Pair the valid rows of a real and a generated store by caption (see ``Pairing``)."""
    real_index = valid_index(real, "real")
    groups = sample_groups(gen, "generated", real_index)
    common = sorted(set(real_index) & set(groups), key=real_index.__getitem__)
    gen_rows, gen_samples = samples_matrix([groups[i] for i in common])
    return Pairing(
        image_ids=common,
        real_rows=np.asarray([real_index[i] for i in common], dtype=np.int64),
        gen_rows=gen_rows,
        n_real_valid=len(real_index),
        n_gen_valid=sum(len(g) for g in groups.values()),
        gen_samples=gen_samples,
    )


def pair_generated(base: RowStore, cand: RowStore) -> Pairing:
    """Pair two generated sets by caption (``base`` as the first side), each side's samples
    averaged per caption; in base row order."""
    a = sample_groups(base, "base")
    b = sample_groups(cand, "candidate")
    common = sorted(set(a) & set(b), key=lambda i: a[i][0])
    real_rows, real_samples = samples_matrix([a[i] for i in common])
    gen_rows, gen_samples = samples_matrix([b[i] for i in common])
    return Pairing(
        image_ids=common,
        real_rows=real_rows,
        gen_rows=gen_rows,
        n_real_valid=sum(len(g) for g in a.values()),
        n_gen_valid=sum(len(g) for g in b.values()),
        gen_samples=gen_samples,
        real_samples=real_samples,
    )


def read_caption_means(
    store: RowStore,
    arrays: Sequence[str],
    rows: I64,
    samples: I64 | None,
    per_image: PerImage | None = None,
) -> Arrays:
    """Per caption, ``per_image`` of its image's arrays (default: the arrays), averaged over
    its samples (``samples``: rows padded with −1; None: the one row ``rows``, values as
    stored). Means are float32 (float64 for float64 values), accumulated sample by sample."""
    if samples is None:
        block = {name: read_rows(store.array(name), rows) for name in arrays}
        return per_image(block) if per_image else block
    present = samples >= 0
    wanted = np.unique(samples[present])
    block = {name: read_rows(store.array(name), wanted) for name in arrays}
    values = per_image(block) if per_image else block
    position = np.searchsorted(wanted, np.where(present, samples, wanted[0]))
    count = present.sum(axis=1)
    out: Arrays = {}
    for name, per_row in values.items():
        dtype = np.float64 if per_row.dtype == np.float64 else np.float32
        total = np.zeros((samples.shape[0], *per_row.shape[1:]), dtype=dtype)
        for s in range(samples.shape[1]):
            has = present[:, s]
            total[has] += per_row[position[has, s]]
        out[name] = total / count.reshape(-1, *([1] * (total.ndim - 1))).astype(dtype)
    return out


def iter_paired_blocks(
    real: RowStore,
    gen: RowStore,
    pairing: Pairing,
    arrays: Sequence[str],
    block_rows: int,
    per_image: PerImage | None = None,
) -> Iterator[tuple[int, int, Arrays, Arrays]]:
    """Yield ``(start, stop, real_arrays, gen_arrays)`` for pairs ``start:stop``: each side's
    arrays (or ``per_image`` of them) per caption, a caption's samples averaged (see
    ``Pairing``); with one row per caption, the rows as stored."""

    def side(store: RowStore, rows: I64, samples: I64 | None, a: int, b: int) -> Arrays:
        part = None if samples is None else samples[a:b]
        return read_caption_means(store, arrays, rows[a:b], part, per_image)

    for start, stop in iter_blocks(pairing.n_pairs, block_rows):
        yield (
            start,
            stop,
            side(real, pairing.real_rows, pairing.real_samples, start, stop),
            side(gen, pairing.gen_rows, pairing.gen_samples, start, stop),
        )


def n_concepts_of(store: RowStore) -> int:
    return int(store.array("xi").shape[1])

"""Per-image row stores in Zarr: the one module that knows how feature and code arrays are laid out.

A row store is a Zarr group whose arrays all share a leading axis of images. Rows are written in
whole chunks and a row's ``done`` flag is set only after its data is written, so an interrupted
writer resumes at the first unfinished chunk and no partially written chunk is ever read as
complete. ``valid`` marks rows whose content is usable (decoded, finite); invalid rows keep a
``status`` string saying why, so nothing is dropped silently.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

ROWSTORE_SCHEMA = "blindspot.rowstore/1"


@dataclass(frozen=True)
class ArraySpec:
    """One per-image array: ``shape`` is the shape of a single row (without the image axis)."""

    row_shape: tuple[int, ...]
    dtype: str
    # Chunk along trailing axes; ``None`` keeps a trailing axis whole in each chunk.
    trailing_chunks: tuple[int, ...] | None = None


def _compressor() -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle=zarr.codecs.BloscShuffle.shuffle)


class RowStore:
    """A Zarr group of per-image arrays with resumable, chunk-aligned writes."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        image_ids: Sequence[str],
        arrays: Mapping[str, ArraySpec],
        attrs: Mapping[str, Any],
        chunk_rows: int = 64,
    ) -> RowStore:
        """Open the store at ``path`` for writing.

        An existing store is resumed when it was made for the same image ids, arrays and
        ``attrs["fingerprint"]``; otherwise it is replaced (its inputs changed, so its rows are
        stale).
        """
        path = Path(path)
        fingerprint = json.dumps(
            {
                "ids": list(image_ids),
                "arrays": {k: [list(v.row_shape), v.dtype] for k, v in arrays.items()},
                "fingerprint": attrs.get("fingerprint"),
                "chunk_rows": chunk_rows,
            },
            sort_keys=True,
        )
        if path.exists():
            try:
                existing = zarr.open_group(str(path), mode="r+")
                if existing.attrs.get("_resume_key") == fingerprint:
                    return cls(existing)
            except Exception:  # noqa: BLE001 - an unreadable store is rebuilt, never trusted
                pass
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w")
        n = len(image_ids)
        ids = group.create_array("image_id", shape=(n,), dtype=str, chunks=(max(1, min(n, 4096)),))
        if n:
            ids[:] = np.asarray(list(image_ids), dtype=str)
        for flag in ("done", "valid"):
            group.create_array(
                flag, shape=(n,), dtype="bool", chunks=(max(1, min(n, 4096)),), fill_value=False
            )
        group.create_array("status", shape=(n,), dtype=str, chunks=(max(1, min(n, 4096)),))
        for name, spec in arrays.items():
            trailing = spec.trailing_chunks or spec.row_shape
            group.create_array(
                name,
                shape=(n, *spec.row_shape),
                dtype=spec.dtype,
                chunks=(chunk_rows, *trailing),
                compressors=_compressor(),
                fill_value=0,
            )
        group.attrs.update(
            {
                **dict(attrs),
                "schema": ROWSTORE_SCHEMA,
                "chunk_rows": chunk_rows,
                "_resume_key": fingerprint,
            }
        )
        return cls(group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> RowStore:
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"no row store at {path}: materialise the upstream asset first")
        group = zarr.open_group(str(path), mode=mode)  # type: ignore[arg-type]
        if group.attrs.get("schema") != ROWSTORE_SCHEMA:
            raise ValueError(
                f"{path} is not a blindspot row store (schema {group.attrs.get('schema')!r})"
            )
        return cls(group)

    # -- reading ------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def n_rows(self) -> int:
        return int(self.group["image_id"].shape[0])

    @property
    def chunk_rows(self) -> int:
        return int(self.group.attrs["chunk_rows"])

    def array(self, name: str) -> zarr.Array:
        arr = self.group[name]
        assert isinstance(arr, zarr.Array)
        return arr

    def image_ids(self) -> list[str]:
        return [str(x) for x in self.array("image_id")[:]]

    def done(self) -> np.ndarray:
        return np.asarray(self.array("done")[:], dtype=bool)

    def valid(self) -> np.ndarray:
        """Rows that are written and usable."""
        valid: np.ndarray = np.asarray(self.array("valid")[:], dtype=bool) & self.done()
        return valid

    def status(self) -> list[str]:
        return [str(x) for x in self.array("status")[:]]

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def iter_row_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, int]]:
        """Chunk-aligned ``(start, stop)`` row ranges covering the store."""
        step = block_rows or self.chunk_rows
        if step % self.chunk_rows:
            step = (step // self.chunk_rows + 1) * self.chunk_rows
        for start in range(0, self.n_rows, step):
            yield start, min(start + step, self.n_rows)

    def pending_blocks(self) -> list[tuple[int, int]]:
        """Chunk-aligned row ranges with at least one row not yet done (what a resume redoes)."""
        done = self.done()
        return [(a, b) for a, b in self.iter_row_blocks() if not done[a:b].all()]

    # -- writing ------------------------------------------------------------------------------
    def write_block(
        self,
        start: int,
        data: Mapping[str, np.ndarray],
        valid: np.ndarray,
        status: Sequence[str],
    ) -> None:
        """Write rows ``start:start+len(valid)`` and only then mark them done."""
        stop = start + len(valid)
        if start % self.chunk_rows or (stop % self.chunk_rows and stop != self.n_rows):
            raise ValueError(f"rows {start}:{stop} are not aligned to chunks of {self.chunk_rows}")
        for name, values in data.items():
            self.array(name)[start:stop] = values
        self.array("valid")[start:stop] = np.asarray(valid, dtype=bool)
        self.array("status")[start:stop] = np.asarray(list(status), dtype=str)
        self.array("done")[start:stop] = True

    def finish(self, **attrs: Any) -> None:
        self.group.attrs.update(attrs)

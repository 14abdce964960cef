"""Per-image row stores in Zarr: the one module that knows how feature and code arrays are laid out.

A row store is a Zarr group whose arrays all share a leading axis of images. Rows are written in
whole chunks and a row's ``done`` flag is set only after its data is written, so an interrupted
writer resumes at the first unfinished chunk and no partially written chunk is ever read as
complete. ``valid`` marks rows whose content is usable (decoded, finite); invalid rows keep a
``status`` string saying why, so nothing is dropped silently.

Scale and faults:

- **Object stores.** ``path`` may be a URL (``s3://bucket/features/real.zarr``, ``file://...``)
  reached through fsspec; credentials and endpoints come from ``storage_options`` or fsspec's
  own configuration (``FSSPEC_S3_ENDPOINT_URL``, ``AWS_*``).
- **Shards.** Many workers may write one store at once, each its own ``shard_ranges`` row range:
  ranges are aligned to every array's chunks, flags included, so no two workers ever
  read-modify-write the same chunk and nothing needs merging afterwards.
- **The previous good store stays readable.** When a complete local store's inputs change, the
  new one is built beside it (``<name>.next``) and swapped in by ``finish()``; a failed rebuild
  (disk full, permission denied) leaves the old one in place. Write errors name the store, the
  rows and the cause.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

ROWSTORE_SCHEMA = "blindspot.rowstore/1"
FLAG_CHUNK_ROWS = 4096  # most rows per chunk of image_id / done / valid / status
MIN_SHARDS = 64  # a store with enough data chunks can be split among this many writers
STAGING_SUFFIX = ".next"  # a rebuilt store is made here and swapped in by finish()


class StoreWriteError(OSError):
    """Writing a store failed (disk full, permission denied, ...); what was done is intact."""


def is_url(path: str | Path) -> bool:
    """Whether ``path`` names an fsspec URL (``s3://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path


def join_location(root: str | Path, *parts: str) -> str | Path:
    """``root / parts``: a URL string under a URL root (``Path`` would fold ``s3://``)."""
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return Path(root).joinpath(*parts)


def _location(path: str | Path) -> str | Path:
    """A URL stays a string (``Path`` would fold ``s3://`` into ``s3:/``); anything else a Path."""
    if is_url(path):
        return str(path).rstrip("/")
    return Path(path)


def _fs_of(url: str, storage_options: Mapping[str, Any] | None) -> Any:
    import fsspec  # type: ignore[import-untyped]

    fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs


def _exists(loc: str | Path, storage_options: Mapping[str, Any] | None) -> bool:
    if isinstance(loc, Path):
        return (loc / "zarr.json").exists()
    return bool(_fs_of(loc, storage_options).exists(f"{loc}/zarr.json"))


def store_exists(path: str | Path, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a row store (or any Zarr group) is at ``path`` (a local path or a URL)."""
    return _exists(_location(path), storage_options)


def _remove(loc: str | Path, storage_options: Mapping[str, Any] | None) -> None:
    if isinstance(loc, Path):
        shutil.rmtree(loc, ignore_errors=True)
        return
    fs = _fs_of(loc, storage_options)
    if fs.exists(loc):
        fs.rm(loc, recursive=True)


def _open_group(
    loc: str | Path, mode: str, storage_options: Mapping[str, Any] | None
) -> zarr.Group:
    if isinstance(loc, Path):
        return zarr.open_group(str(loc), mode=mode)  # type: ignore[arg-type]
    options = dict(storage_options or {})
    if loc.startswith("file://"):
        options.setdefault("auto_mkdir", True)
    return zarr.open_group(loc, mode=mode, storage_options=options)  # type: ignore[arg-type]


def _local_root(group: zarr.Group) -> Path | None:
    root = getattr(group.store, "root", None)
    return Path(root) if isinstance(root, str | Path) and not is_url(str(root)) else None


def _staging(loc: str | Path) -> str | Path:
    if isinstance(loc, Path):
        return loc.with_name(loc.name + STAGING_SUFFIX)
    return loc + STAGING_SUFFIX


def _write_error(where: str, exc: OSError) -> StoreWriteError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.ENOSPC: "free space on the output store",
        errno.EDQUOT: "raise the quota of the output store",
        errno.EACCES: "give this process write access to the output store",
        errno.EPERM: "give this process write access to the output store",
        errno.EROFS: "point the run at a writable output store",
    }.get(exc.errno or 0, "fix the output store")
    err = StoreWriteError(
        exc.errno or 0,
        f"{where}: {reason} ({exc}). Rows written before are intact; {hint} and "
        "re-materialise to resume.",
    )
    return err


def flag_chunk_rows(n_rows: int, chunk_rows: int) -> int:
    """Rows per chunk of the per-row flags (``image_id``, ``done``, ``valid``, ``status``).

    Large chunks make reading the flags of a million rows cheap; but a chunk is also the unit
    two writers must not share, so a store keeps at least ``MIN_SHARDS`` of them (whole data
    chunks each) when it has that many data chunks, and at most ``FLAG_CHUNK_ROWS`` rows each.
    """
    per_shard = -(-n_rows // MIN_SHARDS)
    whole_chunks = -(-per_shard // chunk_rows) * chunk_rows
    return max(1, min(n_rows, FLAG_CHUNK_ROWS, whole_chunks))


def shard_alignment(n_rows: int, chunk_rows: int, flag_rows: int | None = None) -> int:
    """Rows per indivisible unit of concurrent writing: a multiple of every array's chunk."""
    flags = flag_rows if flag_rows is not None else flag_chunk_rows(n_rows, chunk_rows)
    return math.lcm(chunk_rows, flags)


def shard_ranges(
    n_rows: int, chunk_rows: int, n_shards: int, flag_rows: int | None = None
) -> list[tuple[int, int]]:
    """Split ``n_rows`` into at most ``n_shards`` contiguous, chunk-aligned ``(start, stop)``
    ranges that separate workers can write into one store at the same time.

    Ranges are multiples of ``shard_alignment`` rows (e.g. 4096 for 32-row feature chunks), so
    a store has at most ``ceil(n_rows / 4096)`` shards; fewer are returned when asked for more.
    """
    return split_rows(n_rows, shard_alignment(n_rows, chunk_rows, flag_rows), n_shards)


def split_rows(n_rows: int, unit: int, n_shards: int) -> list[tuple[int, int]]:
    """At most ``n_shards`` contiguous ranges of ``n_rows``, each a multiple of ``unit`` rows
    (the last one excepted), as even as that allows; ``[(0, 0)]`` for no rows."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be ≥ 1, got {n_shards}")
    if n_rows == 0:
        return [(0, 0)]
    unit = max(1, unit)
    units = max(1, math.ceil(n_rows / unit))
    n = min(n_shards, units)
    bounds = [min(n_rows, round(i * units / n) * unit) for i in range(n + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


@dataclass(frozen=True)
class ArraySpec:
    """One per-image array: ``shape`` is the shape of a single row (without the image axis)."""

    row_shape: tuple[int, ...]
    dtype: str
    # Chunk along trailing axes; ``None`` keeps a trailing axis whole in each chunk.
    trailing_chunks: tuple[int, ...] | None = None


def _compressor() -> zarr.codecs.BloscCodec:
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle=zarr.codecs.BloscShuffle.shuffle)


def _create_arrays(
    group: zarr.Group, image_ids: Sequence[str], arrays: Mapping[str, ArraySpec], chunk_rows: int
) -> None:
    """A new store's arrays in ``group``: the image ids, the done/valid/status flags (chunked
    by ``flag_chunk_rows``) and each data array, ``chunk_rows`` rows a chunk, zero-filled."""
    n = len(image_ids)
    flag_chunks = (flag_chunk_rows(n, chunk_rows),)
    ids = group.create_array("image_id", shape=(n,), dtype=str, chunks=flag_chunks)
    if n:
        ids[:] = np.asarray(list(image_ids), dtype=str)
    for flag in ("done", "valid"):
        group.create_array(flag, shape=(n,), dtype="bool", chunks=flag_chunks, fill_value=False)
    group.create_array("status", shape=(n,), dtype=str, chunks=flag_chunks)
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


class RowStore:
    """A Zarr group of per-image arrays with resumable, chunk-aligned writes."""

    def __init__(
        self,
        group: zarr.Group,
        final: str | Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.group = group
        # where finish() puts the store (differs from the group's place while it is staged)
        self._final = final
        self._storage_options = storage_options

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        image_ids: Sequence[str],
        arrays: Mapping[str, ArraySpec],
        attrs: Mapping[str, Any],
        chunk_rows: int = 64,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> RowStore:
        """Open the store at ``path`` (a local path or an fsspec URL) for writing.

        An existing store is resumed when it was made for the same image ids, arrays and
        ``attrs["fingerprint"]``; otherwise it is replaced (its inputs changed, so its rows are
        stale). A complete local store being replaced stays readable at ``path`` until the new
        one is finished (built at ``<path>.next``, swapped in by ``finish()``).
        """
        loc = _location(path)
        fingerprint = json.dumps(
            {
                "ids": list(image_ids),
                "arrays": {k: [list(v.row_shape), v.dtype] for k, v in arrays.items()},
                "fingerprint": attrs.get("fingerprint"),
                "chunk_rows": chunk_rows,
            },
            sort_keys=True,
        )
        staging = _staging(loc)
        target = loc
        if _exists(loc, storage_options):
            existing = cls._resumable(loc, fingerprint, storage_options, final=loc)
            if existing is not None:
                return existing
            if isinstance(loc, Path) and cls._complete(loc):
                target = staging  # keep the previous good store until the new one is finished
            else:
                _remove(loc, storage_options)
        if _exists(staging, storage_options):
            resumed = cls._resumable(staging, fingerprint, storage_options, final=loc)
            if resumed is not None and target == staging:
                return resumed
            if resumed is not None and isinstance(loc, Path) and not _exists(loc, None):
                # a crash between finish()'s two renames: the staged store is the new one
                os.replace(staging, loc)
                return cls(_open_group(loc, "r+", None), final=loc)
            _remove(staging, storage_options)
        try:
            group = _open_group(target, "w", storage_options)
            _create_arrays(group, image_ids, arrays, chunk_rows)
            resume = {
                "schema": ROWSTORE_SCHEMA,
                "chunk_rows": chunk_rows,
                "_resume_key": fingerprint,
            }
            group.attrs.update({**dict(attrs), **resume})
        except OSError as exc:
            raise _write_error(f"creating row store {target}", exc) from exc
        return cls(group, final=loc, storage_options=storage_options)

    @classmethod
    def _resumable(
        cls,
        loc: str | Path,
        fingerprint: str,
        storage_options: Mapping[str, Any] | None,
        final: str | Path,
    ) -> RowStore | None:
        try:
            existing = _open_group(loc, "r+", storage_options)
            if existing.attrs.get("_resume_key") == fingerprint:
                return cls(existing, final=final, storage_options=storage_options)
        except Exception:  # noqa: BLE001 - an unreadable store is rebuilt, never trusted
            pass
        return None

    @staticmethod
    def _complete(loc: Path) -> bool:
        try:
            return RowStore(_open_group(loc, "r", None)).is_complete()
        except Exception:  # noqa: BLE001 - an unreadable store is nothing worth keeping
            return False

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: str = "r",
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> RowStore:
        """Open an existing store (a local path or an fsspec URL); ``mode="r+"`` to write."""
        loc = _location(path)
        if not _exists(loc, storage_options):
            raise FileNotFoundError(f"no row store at {loc}: materialise the upstream asset first")
        group = _open_group(loc, mode, storage_options)
        if group.attrs.get("schema") != ROWSTORE_SCHEMA:
            raise ValueError(
                f"{loc} is not a blindspot row store (schema {group.attrs.get('schema')!r})"
            )
        return cls(group, final=loc, storage_options=storage_options)

    @classmethod
    def open_being_written(
        cls, path: str | Path, *, storage_options: Mapping[str, Any] | None = None
    ) -> RowStore:
        """The store that ``create_or_resume(path, ...)`` last handed out, for writing: the
        staged rebuild at ``<path>.next`` while there is one, else the store at ``path``."""
        loc = _location(path)
        staging = _staging(loc)
        if _exists(staging, storage_options):
            store = cls.open(staging, "r+", storage_options=storage_options)
            store._final = loc
            return store
        return cls.open(loc, "r+", storage_options=storage_options)

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

    def has_array(self, name: str) -> bool:
        return name in self.group

    def array(self, name: str) -> zarr.Array:
        arr = self.group[name]
        assert isinstance(arr, zarr.Array)
        return arr

    def image_ids(self) -> list[str]:
        return [str(x) for x in self.array("image_id")[:]]

    def done(self, rows: tuple[int, int] | None = None) -> np.ndarray:
        a, b = rows or (0, self.n_rows)
        return np.asarray(self.array("done")[a:b], dtype=bool)

    def valid(self, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Rows that are written and usable (of the range ``rows``, e.g. one shard's)."""
        a, b = rows or (0, self.n_rows)
        valid: np.ndarray = np.asarray(self.array("valid")[a:b], dtype=bool) & self.done(rows)
        return valid

    def status(self, rows: tuple[int, int] | None = None) -> list[str]:
        a, b = rows or (0, self.n_rows)
        return [str(x) for x in self.array("status")[a:b]]

    def is_complete(self, rows: tuple[int, int] | None = None) -> bool:
        """Every row done (or every row of the range ``rows``, e.g. one shard's)."""
        a, b = rows or (0, self.n_rows)
        return bool(np.asarray(self.array("done")[a:b], dtype=bool).all())

    def iter_row_blocks(
        self, block_rows: int | None = None, rows: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, int]]:
        """Chunk-aligned ``(start, stop)`` row ranges covering the store (or ``rows``)."""
        step = block_rows or self.chunk_rows
        if step % self.chunk_rows:
            step = (step // self.chunk_rows + 1) * self.chunk_rows
        lo, hi = self._check_range(rows)
        for start in range(lo, hi, step):
            yield start, min(start + step, hi)

    def pending_blocks(self, rows: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Chunk-aligned row ranges with at least one row not yet done (what a resume redoes);
        within ``rows`` only, for a shard worker."""
        lo, hi = self._check_range(rows)
        done = np.asarray(self.array("done")[lo:hi], dtype=bool)
        return [
            (a, b) for a, b in self.iter_row_blocks(rows=rows) if not done[a - lo : b - lo].all()
        ]

    def shard_ranges(self, n_shards: int) -> list[tuple[int, int]]:
        """Row ranges that ``n_shards`` workers can write at once (see ``shard_ranges``)."""
        flag_rows = int(self.array("done").chunks[0])
        return shard_ranges(self.n_rows, self.chunk_rows, n_shards, flag_rows)

    def _check_range(self, rows: tuple[int, int] | None) -> tuple[int, int]:
        if rows is None:
            return 0, self.n_rows
        lo, hi = rows
        if not 0 <= lo <= hi <= self.n_rows or lo % self.chunk_rows:
            raise ValueError(
                f"row range {lo}:{hi} is not a chunk-aligned range of {self.n_rows} rows "
                f"(chunks of {self.chunk_rows})"
            )
        return lo, hi

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
        try:
            for name, values in data.items():
                self.array(name)[start:stop] = values
            self.array("valid")[start:stop] = np.asarray(valid, dtype=bool)
            self.array("status")[start:stop] = np.asarray(list(status), dtype=str)
            # last: a row is done only once all of its data is on the store
            self.array("done")[start:stop] = True
        except OSError as exc:
            raise _write_error(f"writing rows {start}:{stop} of {self.location}", exc) from exc

    @property
    def location(self) -> str:
        """Where the store's group lives now (``<final>.next`` while a rebuild is staged)."""
        return str(self.group.store_path)

    def finish(self, **attrs: Any) -> None:
        """Record final attributes; a staged rebuild then replaces the previous store."""
        try:
            self.group.attrs.update(attrs)
            final, here = self._final, _local_root(self.group)
            if isinstance(final, Path) and here is not None:
                staged = final.with_name(final.name + STAGING_SUFFIX)
                if here.resolve() == staged.resolve():
                    self._swap_in(staged, final)
        except OSError as exc:
            raise _write_error(f"finishing row store {self.location}", exc) from exc

    def _swap_in(self, staged: Path, final: Path) -> None:
        """Replace ``final`` by the finished ``staged`` store: two renames, the old one last out."""
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
        self.group = _open_group(final, "r+", None)

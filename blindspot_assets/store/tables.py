"""Result tables: one Parquet file per (table, partition), exposed as DuckDB views.

Each model partition writes its own Parquet file atomically (write to a temporary name, then
rename), so parallel partition runs never contend for a DuckDB write lock and a crashed run never
leaves half a table. The DuckDB database holds only views over those files; it is rewritten under
an exclusive file lock, briefly, and readers (``query``) take the same lock shared, so a query
never meets a refresh half-way and any number of queries run at once.

Scale:

- **Shards.** A partition may instead be a folder of part files, one per shard
  (``<table>/<partition>/part-<shard>.parquet``, ``write_table_part``): many workers write one
  model's rows at once, each its own file, and the views read the parts directly — nothing
  merges them through a single writer.
- **Object stores.** ``tables_root`` may be an fsspec URL (``s3://bucket/run/tables``). Parquet
  files are written through fsspec (an object store's PUT is all-or-nothing, so a crashed writer
  leaves no half file), and the local DuckDB file's views read them through
  ``register_filesystem`` (DuckDB's own httpfs extension is not needed).

Write errors (disk full, permission denied) raise ``StoreWriteError`` naming the table and
partition; the previous file of that partition is left as it was.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from blindspot_assets.store.atomic import write_atomic
from blindspot_assets.store.layout import check_key, check_store_key
from blindspot_assets.store.rowstore import _write_error, is_url, join_location

PART_PREFIX = "part-"


def _fs(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    import fsspec  # type: ignore[import-untyped]

    fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs


def table_dir(tables_root: str | Path, table: str) -> Path:
    """The folder of one table (local roots; see ``table_location`` for URLs)."""
    return Path(tables_root) / check_key(table)


def table_location(tables_root: str | Path, table: str) -> str | Path:
    """The folder of one table: a Path, or a URL string under an object-store root."""
    return join_location(tables_root, check_key(table))


def _write_parquet(df: pl.DataFrame, final: str | Path, what: str) -> None:
    """Write ``df`` to ``final`` all-or-nothing; the previous file stays on any failure."""
    try:
        if isinstance(final, Path):
            write_atomic(final, df.write_parquet)
        else:
            fs = _fs(final)
            if final.startswith("file://"):
                fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            # An object store publishes an upload only when it completes (single PUT or the
            # multipart commit on close): no reader ever sees half a file.
            with fs.open(final, "wb") as fh:
                df.write_parquet(fh)
    except OSError as exc:
        raise _write_error(f"writing {what} to {final}", exc) from exc


def write_table_partition(
    tables_root: str | Path, table: str, partition: str, df: pl.DataFrame
) -> str | Path:
    """Replace the rows of ``table`` for ``partition`` (a model key, or ``all``) atomically."""
    final = join_location(
        table_location(tables_root, table), f"{check_store_key(partition)}.parquet"
    )
    _write_parquet(df, final, f"table {table} partition {partition}")
    _remove_parts(tables_root, table, partition)
    return final


def write_table_part(
    tables_root: str | Path, table: str, partition: str, part: int, df: pl.DataFrame
) -> str | Path:
    """Write one shard's rows of ``table``/``partition`` as its own part file (atomic).

    Workers write different ``part`` numbers at the same time without any lock. A partition
    is either one file (``write_table_partition``) or a folder of parts; ``clear_table_partition``
    starts a partition over (e.g. before a run with a different number of shards).
    """
    if part < 0:
        raise ValueError(f"part must be ≥ 0, got {part}")
    final = join_location(
        table_location(tables_root, table),
        check_store_key(partition),
        f"{PART_PREFIX}{part:05d}.parquet",
    )
    _write_parquet(df, final, f"table {table} partition {partition} part {part}")
    return final


def _remove_parts(tables_root: str | Path, table: str, partition: str) -> None:
    parts = join_location(table_location(tables_root, table), check_store_key(partition))
    if isinstance(parts, Path):
        shutil.rmtree(parts, ignore_errors=True)
    else:
        fs = _fs(parts)
        if fs.exists(parts):
            fs.rm(parts, recursive=True)


def clear_table_partition(tables_root: str | Path, table: str, partition: str) -> None:
    """Remove every row of ``partition`` (its file and its part files)."""
    _remove_parts(tables_root, table, partition)
    single = join_location(
        table_location(tables_root, table), f"{check_store_key(partition)}.parquet"
    )
    if isinstance(single, Path):
        single.unlink(missing_ok=True)
    else:
        fs = _fs(single)
        if fs.exists(single):
            fs.rm(single)


def _files(tables_root: str | Path, table: str, partition: str | None) -> list[str | Path]:
    d = table_location(tables_root, table)
    if isinstance(d, Path):
        if partition:
            pats = [f"{partition}.parquet", f"{partition}/{PART_PREFIX}*.parquet"]
        else:
            pats = ["*.parquet", f"*/{PART_PREFIX}*.parquet"]
        return sorted(f for pat in pats for f in d.glob(pat))
    fs = _fs(d)
    protocol = d.split("://", 1)[0]
    if partition:
        pats = [f"{d}/{partition}.parquet", f"{d}/{partition}/{PART_PREFIX}*.parquet"]
    else:
        pats = [f"{d}/*.parquet", f"{d}/*/{PART_PREFIX}*.parquet"]
    found = sorted({p for pat in pats for p in fs.glob(pat)})
    return [p if "://" in p else f"{protocol}://{p}" for p in found]


def list_tables(
    tables_root: str | Path, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The names of the tables under ``tables_root`` (a local path or a URL), sorted."""
    if not is_url(tables_root):
        root = Path(tables_root)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    url = str(tables_root).rstrip("/")
    fs = _fs(url, storage_options)
    if not fs.exists(url):
        return []
    entries = fs.ls(url, detail=True)
    return sorted(
        e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
    )


def read_table(tables_root: str | Path, table: str, partition: str | None = None) -> pl.DataFrame:
    """Rows of ``table`` (one partition, or all of them; part files included)."""
    files = _files(tables_root, table, partition)
    if not files:
        d = table_location(tables_root, table)
        raise FileNotFoundError(f"table {table!r} has no rows under {d} (partition={partition})")
    frames = []
    for f in files:
        if isinstance(f, Path):
            frames.append(pl.read_parquet(f))
        else:
            with _fs(f).open(f, "rb") as fh:
                frames.append(pl.read_parquet(fh))
    return pl.concat(frames, how="diagonal_relaxed")


@contextmanager
def _locked(lock_path: Path, exclusive: bool, timeout_s: float = 120.0) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(lock_path, "a")  # noqa: SIM115 - held for the whole block below
    except OSError:
        if exclusive:
            raise
        yield  # a read-only copy of the results: nobody refreshes it, nothing to wait for
        return
    with fh:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {lock_path} in {timeout_s}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _exclusive(lock_path: Path, timeout_s: float = 120.0) -> Iterator[None]:
    with _locked(lock_path, True, timeout_s):
        yield


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


_PROTOCOL_RE = re.compile(r"'([a-z][a-z0-9+.-]*)://")


def _register_filesystems(
    con: duckdb.DuckDBPyConnection, protocols: set[str], storage_options: Mapping[str, Any] | None
) -> None:
    import fsspec

    for protocol in sorted(protocols - {"file"}):
        con.register_filesystem(fsspec.filesystem(protocol, **dict(storage_options or {})))


def refresh_views(
    db_path: Path,
    tables_root: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """(Re)create one DuckDB view per table directory; returns the view names.

    ``db_path`` is a local file (DuckDB cannot keep a database on an object store);
    ``tables_root`` may be a URL, read through fsspec.
    """
    views = []
    with _exclusive(db_path.with_suffix(".lock")):
        con = duckdb.connect(str(db_path))
        try:
            if is_url(tables_root):
                protocol = str(tables_root).split("://", 1)[0]
                _register_filesystems(con, {protocol}, storage_options)
            root = tables_root if is_url(tables_root) else Path(tables_root).resolve()
            for name in list_tables(root, storage_options):
                d = join_location(root, name)
                globs = _view_globs(d, storage_options)
                if not globs:
                    continue
                files = "[" + ", ".join(_sql_str(g) for g in globs) + "]"
                con.execute(
                    f"CREATE OR REPLACE VIEW {name} AS "
                    f"SELECT * FROM read_parquet({files}, union_by_name = true)"
                )
                views.append(name)
        finally:
            con.close()
    return views


def _view_globs(d: str | Path, storage_options: Mapping[str, Any] | None) -> list[str]:
    """The globs of a table's files that match something now (DuckDB fails on an empty glob)."""
    pats = ["*.parquet", f"*/{PART_PREFIX}*.parquet"]
    if isinstance(d, Path):
        return [str(d / p) for p in pats if any(d.glob(p))]
    fs = _fs(d, storage_options)
    return [f"{d}/{p}" for p in pats if fs.glob(f"{d}/{p}")]


def query(
    db_path: Path, sql: str, *, storage_options: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Run a read-only SQL query against the results database.

    Waits while a refresh holds the database (the lock is shared among readers); views over an
    object store are read through fsspec filesystems registered on the connection.
    """
    with _locked(db_path.with_suffix(".lock"), exclusive=False):
        con = duckdb.connect(str(db_path), read_only=True)
        try:
            view_sql = con.sql("SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall()
            protocols = {m for (text,) in view_sql for m in _PROTOCOL_RE.findall(text or "")}
            if protocols - {"file"}:
                _register_filesystems(con, protocols, storage_options)
            df: pl.DataFrame = con.sql(sql).pl()
            return df
        finally:
            con.close()

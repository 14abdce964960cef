"""Result tables: one Parquet file per (table, partition), exposed as DuckDB views.

Each model partition writes its own Parquet file atomically (write to a temporary name, then
rename), so parallel partition runs never contend for a DuckDB write lock and a crashed run never
leaves half a table. The DuckDB database holds only views over those files; it is rewritten under
an exclusive file lock, briefly, and any DuckDB client can query it while no run is refreshing it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from blindspot_assets.store.layout import check_key


def table_dir(tables_root: Path, table: str) -> Path:
    return tables_root / check_key(table)


def write_table_partition(tables_root: Path, table: str, partition: str, df: pl.DataFrame) -> Path:
    """Replace the rows of ``table`` for ``partition`` (a model key, or ``all``) atomically."""
    out_dir = table_dir(tables_root, table)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{check_key(partition)}.parquet"
    tmp = out_dir / f".{partition}.{os.getpid()}.tmp"
    df.write_parquet(tmp)
    os.replace(tmp, final)
    return final


def read_table(tables_root: Path, table: str, partition: str | None = None) -> pl.DataFrame:
    """Rows of ``table`` (one partition, or all of them)."""
    d = table_dir(tables_root, table)
    files = [d / f"{partition}.parquet"] if partition else sorted(d.glob("*.parquet"))
    files = [f for f in files if f.exists()]
    if not files:
        raise FileNotFoundError(f"table {table!r} has no rows under {d} (partition={partition})")
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


@contextmanager
def _exclusive(lock_path: Path, timeout_s: float = 120.0) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {lock_path} in {timeout_s}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refresh_views(db_path: Path, tables_root: Path) -> list[str]:
    """(Re)create one DuckDB view per table directory; returns the view names."""
    views = []
    with _exclusive(db_path.with_suffix(".lock")):
        con = duckdb.connect(str(db_path))
        try:
            for d in sorted(p for p in tables_root.glob("*") if p.is_dir()):
                if not any(d.glob("*.parquet")):
                    continue
                glob = str((d / "*.parquet").resolve()).replace("'", "''")
                con.execute(
                    f"CREATE OR REPLACE VIEW {d.name} AS "
                    f"SELECT * FROM read_parquet('{glob}', union_by_name = true)"
                )
                views.append(d.name)
        finally:
            con.close()
    return views


def query(db_path: Path, sql: str) -> pl.DataFrame:
    """Run a read-only SQL query against the results database."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        df: pl.DataFrame = con.sql(sql).pl()
        return df
    finally:
        con.close()

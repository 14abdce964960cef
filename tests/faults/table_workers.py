"""Processes of the concurrency test: they import only the store (a spawned child re-imports
the module of its target, and the test module would bring torch along)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import polars as pl

from blindspot_assets.store.tables import query, refresh_views, write_table_partition

ROUNDS = 12


def _writer(tables: str, db: str, model: str, out: mp.Queue) -> None:
    try:
        for i in range(ROUNDS):
            df = pl.DataFrame(
                {"model_key": [model] * 500, "concept": list(range(500)), "round": [i] * 500}
            )
            write_table_partition(Path(tables), "concept_stats", model, df)
            refresh_views(Path(db), Path(tables))
        out.put((model, None))
    except Exception as exc:
        out.put((model, repr(exc)))


def _reader(db: str, out: mp.Queue, stop: Any) -> None:
    """Query the view until the writers are done (``stop`` set) or a minute passes."""
    errors, reads = [], 0
    deadline = time.monotonic() + 60
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if not Path(db).exists():
                time.sleep(0.01)
                continue
            try:
                n = query(Path(db), "SELECT count(*) n FROM concept_stats")["n"][0]
                assert n % 500 == 0, f"a half-written partition was read: {n} rows"
                reads += 1
            except Exception as exc:
                if "does not exist" not in str(exc):  # before the first view
                    errors.append(repr(exc))
    finally:
        out.put(("reader", errors or None, reads))

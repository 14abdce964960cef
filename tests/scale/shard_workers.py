"""A shard worker of the sharding test: writes its row range of one shared store, and its part
file of a table (imports only the store, so a spawned process starts fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import write_table_part


def expected_block(start: int, stop: int) -> np.ndarray:
    rows = np.arange(start, stop, dtype=np.float32)[:, None, None]
    return np.broadcast_to(rows % 1000, (stop - start, 3, 4)).astype(np.float16)


def write_shard(store: str, tables: str, shard: int, start: int, stop: int) -> int:
    rs = RowStore.open(store, mode="r+")
    blocks = rs.pending_blocks(rows=(start, stop))
    for a, b in blocks:
        valid = np.ones(b - a, bool)
        valid[::7] = False  # some invalid rows, each with its reason
        status = ["ok" if v else f"bad_{a}" for v in valid]
        rs.write_block(a, {"tokens": expected_block(a, b)}, valid, status)
    ids = rs.image_ids()[start:stop]
    df = pl.DataFrame({"image_id": ids, "shard": [shard] * len(ids)})
    write_table_part(Path(tables), "datapoint_deltas", "demo-a", shard, df)
    return len(blocks)

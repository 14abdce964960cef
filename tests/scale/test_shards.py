"""One model's rows fanned out over many workers: shard ranges of one Zarr store written at once
by separate processes, and one part file per shard — complete, exact, nothing merged."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from blindspot_assets.store.rowstore import ArraySpec, RowStore, shard_alignment, shard_ranges
from blindspot_assets.store.tables import query, read_table, refresh_views
from tests.scale.shard_workers import expected_block, write_shard

SPEC = {"tokens": ArraySpec((3, 4), "float16")}


def test_shard_ranges_are_aligned_to_every_chunk():
    # 1M images in chunks of 32 rows: flags are chunked by 4096, so shards are multiples of it
    ranges = shard_ranges(1_000_000, 32, 64)
    assert len(ranges) == 64
    assert ranges[0][0] == 0 and ranges[-1][1] == 1_000_000
    assert all(a % 4096 == 0 for a, _ in ranges)
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))
    assert len(shard_ranges(1_000_000, 32, 10_000)) == 245  # at most one per 4096 rows
    # a small store keeps flag chunks of whole data chunks, so it still splits
    assert shard_alignment(100, 32) == 32
    assert shard_ranges(100, 32, 4) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert shard_alignment(10_000, 32) == 160  # ≥ 64 shards' worth of flag chunks
    assert len(shard_ranges(10_000, 32, 1000)) == 63
    assert shard_alignment(100, 32, flag_rows=100) == 800  # a store made with other flags
    assert shard_ranges(10, 4, 1) == [(0, 10)]
    with pytest.raises(ValueError, match="n_shards"):
        shard_ranges(10, 4, 0)


def test_pending_blocks_refuses_an_unaligned_range(tmp_path):
    store = RowStore.create_or_resume(tmp_path / "s.zarr", list("abcdefgh"), SPEC, {}, 4)
    assert store.pending_blocks(rows=(4, 8)) == [(4, 8)]
    with pytest.raises(ValueError, match="chunk-aligned"):
        store.pending_blocks(rows=(2, 8))


@pytest.mark.slow
def test_shards_written_by_parallel_workers_make_one_complete_store(tmp_path):
    n = 4 * 4096 + 1000  # flag chunks of 288 rows (n / 64 in whole 32-row chunks)
    ids = [f"img{i:06d}" for i in range(n)]
    path = tmp_path / "features.zarr"
    # the coordinator creates the store once; workers only open it and write their rows
    store = RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "x"}, chunk_rows=32)
    shards = store.shard_ranges(8)
    assert len(shards) == 8 and all(a % 288 == 0 for a, _ in shards)
    tables, db = tmp_path / "tables", tmp_path / "r.duckdb"
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(write_shard, str(path), str(tables), i, a, b)
            for i, (a, b) in enumerate(shards)
        ]
        blocks = [f.result(timeout=120) for f in futures]
    assert sum(blocks) == -(-n // 32)
    done = RowStore.open(path)
    assert done.is_complete()
    assert np.array_equal(done.array("tokens")[:], expected_block(0, n))
    valid = done.valid()
    assert valid.sum() == n - sum(len(range(a, b, 7)) for a, b in done.iter_row_blocks())
    assert done.status()[32] == "bad_32"
    # a worker that re-runs its finished shard has nothing to do
    assert write_shard(str(path), str(tables), 0, *shards[0]) == 0
    # one part file per shard; the view reads them all, no merge
    refresh_views(db, tables)
    assert query(db, "SELECT count(*) n, count(DISTINCT image_id) u FROM datapoint_deltas").row(
        0
    ) == (n, n)
    assert read_table(tables, "datapoint_deltas", "demo-a").height == n

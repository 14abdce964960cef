"""Disk full and permission denied on the output store: a clear error naming what failed, and
the previous good materialisation intact — for tables, row stores and a Dagster asset."""

from __future__ import annotations

import errno

import dagster as dg
import numpy as np
import polars as pl
import pytest
import zarr.storage

from blindspot_assets.definitions import defs
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.store.rowstore import ArraySpec, RowStore, StoreWriteError
from blindspot_assets.store.tables import query, read_table, refresh_views, write_table_partition
from tests.conftest import demo_config_dict, write_config

SPEC = {"tokens": ArraySpec((3, 4), "float16")}


def _disk_full_parquet(monkeypatch):
    """Parquet writes put half a file on disk, then the disk is full."""

    def write_parquet(self, file, *args, **kwargs):
        with open(file, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)


def test_table_write_on_a_full_disk_keeps_the_previous_partition(tmp_path, monkeypatch):
    tables, db = tmp_path / "tables", tmp_path / "r.duckdb"
    good = pl.DataFrame({"model_key": ["m"] * 3, "concept": [0, 1, 2]})
    final = write_table_partition(tables, "concept_stats", "m", good)
    refresh_views(db, tables)
    before = final.read_bytes()
    _disk_full_parquet(monkeypatch)
    with pytest.raises(StoreWriteError, match="No space left on device") as err:
        write_table_partition(tables, "concept_stats", "m", good.head(1))
    assert "table concept_stats partition m" in str(err.value)
    assert "free space" in str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert final.read_bytes() == before
    assert [p.name for p in final.parent.iterdir()] == ["m.parquet"]  # no half file left
    monkeypatch.undo()
    assert query(db, "SELECT count(*) n FROM concept_stats")["n"][0] == 3
    assert read_table(tables, "concept_stats", "m").equals(good)


def _failing_store_writes(monkeypatch, err_no: int, after: int = 0):
    """Every chunk write to a local Zarr store fails with ``err_no`` after ``after`` writes."""
    original = zarr.storage.LocalStore.set
    calls = [0]

    async def set_(self, key, value):
        calls[0] += 1
        if calls[0] > after and "/c/" in key or (calls[0] > after and key.endswith("/c")):
            raise OSError(err_no, __import__("os").strerror(err_no), key)
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)


def test_permission_denied_mid_store_keeps_done_rows(tmp_path, monkeypatch):
    ids = [f"id{i}" for i in range(8)]
    path = tmp_path / "s.zarr"
    store = RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "a"}, 4)
    block = np.full((4, 3, 4), 7, np.float16)
    store.write_block(0, {"tokens": block}, np.ones(4, bool), ["ok"] * 4)
    _failing_store_writes(monkeypatch, errno.EACCES)
    with pytest.raises(StoreWriteError, match="Permission denied") as err:
        store.write_block(4, {"tokens": block}, np.ones(4, bool), ["ok"] * 4)
    assert "rows 4:8" in str(err.value) and "s.zarr" in str(err.value)
    monkeypatch.undo()
    reopened = RowStore.open(path)
    assert reopened.done().tolist() == [True] * 4 + [False] * 4
    assert np.array_equal(reopened.array("tokens")[0:4], block)
    assert RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "a"}, 4).pending_blocks() == [
        (4, 8)
    ]


def test_failed_rebuild_leaves_the_previous_complete_store(tmp_path, monkeypatch):
    ids = [f"id{i}" for i in range(8)]
    path = tmp_path / "s.zarr"
    old = RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "v1"}, 4)
    for start in (0, 4):
        old.write_block(start, {"tokens": np.ones((4, 3, 4))}, np.ones(4, bool), ["ok"] * 4)
    old.finish()
    # the inputs changed: a rebuild starts beside the old store, and the disk fills up
    new = RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "v2"}, 4)
    assert new.location.endswith("s.zarr.next")
    _failing_store_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(StoreWriteError, match="No space left"):
        new.write_block(0, {"tokens": np.zeros((4, 3, 4))}, np.ones(4, bool), ["ok"] * 4)
    monkeypatch.undo()
    kept = RowStore.open(path)
    assert kept.is_complete() and kept.attrs["fingerprint"] == "v1"
    assert np.array_equal(kept.array("tokens")[:], np.ones((8, 3, 4)))
    # with space again, the rebuild resumes beside it and replaces it when finished
    again = RowStore.create_or_resume(path, ids, SPEC, {"fingerprint": "v2"}, 4)
    assert again.pending_blocks() == [(0, 4), (4, 8)]
    for start in (0, 4):
        again.write_block(start, {"tokens": np.zeros((4, 3, 4))}, np.ones(4, bool), ["ok"] * 4)
    again.finish()
    swapped = RowStore.open(path)
    assert swapped.attrs["fingerprint"] == "v2" and swapped.is_complete()
    assert not (tmp_path / "s.zarr.next").exists() and not (tmp_path / "s.zarr.old").exists()
    assert again.done().all()  # the writer's handle follows the store to its final place


@pytest.mark.slow
def test_asset_fails_clearly_on_a_full_disk_and_keeps_the_last_good_table(tmp_path, monkeypatch):
    raw = demo_config_dict(tmp_path, n_images=32)
    raw["sae"].update({"n_concepts": 32, "n_candidates": 64, "epochs": 1})
    raw["stats"].update({"n_bootstrap": 20, "n_permutations": 20})
    config = write_config(tmp_path, raw)
    resources = {"run_config": RunConfigResource(config_path=str(config))}
    instance = dg.DagsterInstance.ephemeral()
    first = defs.resolve_job_def("blindspot_job").execute_in_process(
        instance=instance,
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": "demo-a",
            "dagster/asset_partition_range_end": "demo-b",
        },
    )
    assert first.success
    table = tmp_path / "data" / "tables" / "concept_stats" / "demo-a.parquet"
    before = table.read_bytes()
    db = tmp_path / "data" / "blindspots.duckdb"

    _disk_full_parquet(monkeypatch)
    second = dg.materialize(
        list(defs.assets or []),
        selection=[dg.AssetKey("concept_stats")],
        partition_key="demo-a",
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    monkeypatch.undo()
    assert not second.success
    (failure,) = [e for e in second.all_events if e.is_step_failure]
    message = str(failure.event_specific_data.error)
    assert "No space left on device" in message and "concept_stats" in message
    assert table.read_bytes() == before
    rows = query(db, "SELECT DISTINCT run_id FROM concept_stats WHERE model_key = 'demo-a'")
    assert rows["run_id"].to_list() == [first.run_id]
    latest = instance.get_latest_materialization_event(dg.AssetKey("concept_stats"))
    assert latest is not None and latest.run_id == first.run_id

import threading

import numpy as np
import polars as pl
import pytest

from blindspot_assets.store.images import read_manifest, write_manifest
from blindspot_assets.store.rowstore import ArraySpec, RowStore
from blindspot_assets.store.tables import query, read_table, refresh_views, write_table_partition

SPEC = {"tokens": ArraySpec((3, 4), "float16")}


def test_rowstore_round_trip_and_resume(tmp_path):
    ids = [f"id{i}" for i in range(10)]
    store = RowStore.create_or_resume(tmp_path / "s.zarr", ids, SPEC, {"fingerprint": "a"}, 4)
    assert store.pending_blocks() == [(0, 4), (4, 8), (8, 10)]
    block = np.arange(4 * 12, dtype=np.float16).reshape(4, 3, 4)
    store.write_block(0, {"tokens": block}, np.array([1, 1, 0, 1], bool), ["ok", "ok", "bad", "ok"])
    again = RowStore.create_or_resume(tmp_path / "s.zarr", ids, SPEC, {"fingerprint": "a"}, 4)
    assert again.pending_blocks() == [(4, 8), (8, 10)]
    assert np.array_equal(again.array("tokens")[0:4], block)
    assert again.valid().tolist()[:4] == [True, True, False, True]
    assert again.status()[2] == "bad"
    assert again.image_ids() == ids


def test_rowstore_is_rebuilt_when_its_inputs_change(tmp_path):
    ids = ["a", "b"]
    store = RowStore.create_or_resume(tmp_path / "s.zarr", ids, SPEC, {"fingerprint": "v1"}, 2)
    store.write_block(0, {"tokens": np.ones((2, 3, 4))}, np.ones(2, bool), ["ok", "ok"])
    rebuilt = RowStore.create_or_resume(tmp_path / "s.zarr", ids, SPEC, {"fingerprint": "v2"}, 2)
    assert rebuilt.pending_blocks() == [(0, 2)]
    assert not rebuilt.done().any()


def test_rowstore_refuses_unaligned_writes(tmp_path):
    store = RowStore.create_or_resume(tmp_path / "s.zarr", list("abcdef"), SPEC, {}, 4)
    with pytest.raises(ValueError, match="aligned"):
        store.write_block(1, {"tokens": np.ones((2, 3, 4))}, np.ones(2, bool), ["ok"] * 2)


def test_open_missing_store_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr"):
        RowStore.open(tmp_path / "nothing.zarr")


def test_parallel_partition_writes_never_lose_rows_or_fail_on_a_lock(tmp_path):
    tables, db = tmp_path / "tables", tmp_path / "r.duckdb"
    errors = []

    def work(model):
        try:
            for i in range(5):
                df = pl.DataFrame(
                    {"model_key": [model] * 100, "concept": list(range(100)), "i": [i] * 100}
                )
                write_table_partition(tables, "concept_stats", model, df)
                refresh_views(db, tables)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"m{j}",)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    counts = query(db, "SELECT model_key, count(*) n, max(i) i FROM concept_stats GROUP BY 1")
    assert sorted(counts["model_key"]) == ["m0", "m1", "m2", "m3"]
    assert set(counts["n"]) == {100} and set(counts["i"]) == {4}
    assert read_table(tables, "concept_stats", "m1").height == 100


def test_manifest_rejects_duplicates_and_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="lacks columns"):
        write_manifest(tmp_path, pl.DataFrame({"image_id": ["a"]}))
    df = pl.DataFrame(
        {
            "image_id": ["a", "a"],
            "path": ["x", "y"],
            "caption": ["", ""],
            "status": ["ok", "ok"],
            "detail": ["", ""],
        }
    )
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(tmp_path, df)
    with pytest.raises(FileNotFoundError, match="materialise"):
        read_manifest(tmp_path / "none")

"""The whole graph with ``store_root`` on an S3-compatible object store (moto on loopback):
every Zarr store and table lives in the bucket, nothing of them on local disk, and the results
equal those of the same run with local stores."""

from __future__ import annotations

import pytest
from polars.testing import assert_frame_equal

from blindspot_assets.config import load_config
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import query, read_table
from tests.conftest import demo_config_dict, write_config
from tests.e2e.test_demo import run_whole_graph


@pytest.mark.slow
def test_whole_graph_with_stores_and_tables_on_s3(tmp_path, s3_bucket):
    import s3fs

    raw = demo_config_dict(tmp_path, n_images=120, sae={"epochs": 2})
    local = load_config(write_config(tmp_path, raw))
    (tmp_path / "s3run").mkdir()
    raw_s3 = {**raw, "data_root": str(tmp_path / "s3run"), "store_root": f"{s3_bucket}/run"}
    on_s3 = load_config(write_config(tmp_path / "s3run", raw_s3))
    assert on_s3.layout.features("real") == f"{s3_bucket}/run/features/real.zarr"

    assert run_whole_graph(local.source_path).success
    assert run_whole_graph(on_s3.source_path).success

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = s3_bucket.removeprefix("s3://")
    for dataset in ["real", *on_s3.models]:
        for kind in ("features", "codes"):
            assert fs.exists(f"{bucket}/run/{kind}/{dataset}.zarr/zarr.json"), (kind, dataset)
            store = RowStore.open(getattr(on_s3.layout, kind)(dataset))
            assert store.is_complete() and store.attrs.get("completed_at")
    assert fs.exists(f"{bucket}/run/tables/concept_stats")
    # images, the SAE, the DuckDB file of views and the report stay under data_root
    local_root = tmp_path / "s3run"
    assert not (local_root / "features").exists() and not (local_root / "tables").exists()
    assert (local_root / "report" / "index.html").exists() and (local_root / "sae").exists()

    for table in ("concept_stats", "blindspots", "datapoint_deltas", "concept_top_images"):
        want = read_table(local.layout.tables, table).drop("run_id", strict=False)
        got = read_table(on_s3.layout.tables, table).drop("run_id", strict=False)
        assert want.height > 0, table
        key = [c for c in ("model_key", "dataset", "concept", "image_id", "rank") if c in want]
        assert_frame_equal(got.sort(key), want.sort(key), check_exact=True)
    # the DuckDB views read the bucket
    n = query(on_s3.layout.duckdb, "SELECT count(*) n FROM blindspots")["n"][0]
    assert n == read_table(local.layout.tables, "blindspots").height > 0

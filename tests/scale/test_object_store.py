"""Zarr row stores and result tables on an S3-compatible object store (moto on loopback)."""

from __future__ import annotations

import numpy as np
import polars as pl

from blindspot_assets.config import parse_config
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.sources.demo import fetch
from blindspot_assets.store.rowstore import ArraySpec, RowStore
from blindspot_assets.store.tables import (
    query,
    read_table,
    refresh_views,
    write_table_part,
    write_table_partition,
)
from tests.conftest import demo_config_dict

SPEC = {"tokens": ArraySpec((3, 4), "float16")}


def test_rowstore_on_s3_resumes_and_reads_back(s3_bucket):
    url = f"{s3_bucket}/features/real.zarr"
    ids = [f"id{i}" for i in range(10)]
    store = RowStore.create_or_resume(url, ids, SPEC, {"fingerprint": "a"}, 4)
    block = np.arange(48, dtype=np.float16).reshape(4, 3, 4)
    store.write_block(0, {"tokens": block}, np.array([1, 1, 0, 1], bool), ["ok", "ok", "x", "ok"])
    again = RowStore.create_or_resume(url, ids, SPEC, {"fingerprint": "a"}, 4)
    assert again.pending_blocks() == [(4, 8), (8, 10)]
    reader = RowStore.open(url)
    assert np.array_equal(reader.array("tokens")[0:4], block)
    assert reader.valid().tolist()[:4] == [True, True, False, True]
    assert reader.image_ids() == ids
    # different inputs: rebuilt in place on an object store
    rebuilt = RowStore.create_or_resume(url, ids, SPEC, {"fingerprint": "b"}, 4)
    assert rebuilt.pending_blocks() == [(0, 4), (4, 8), (8, 10)]


def test_features_streamed_to_s3_equal_local_ones(tmp_path, s3_bucket):
    cfg = parse_config(demo_config_dict(tmp_path, n_images=24))
    manifest = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    encoder = load_encoder(cfg.encoder)
    local = extract_features(encoder, manifest, cfg.layout.real_images, tmp_path / "f.zarr")
    url = f"{s3_bucket}/run/features/real.zarr"
    remote = extract_features(encoder, manifest, cfg.layout.real_images, url)  # type: ignore[arg-type]
    assert remote.n_valid == local.n_valid == 24
    a, b = RowStore.open(tmp_path / "f.zarr"), RowStore.open(url)
    for name in ("tokens", "valid", "done", "status", "image_id"):
        assert np.array_equal(a.array(name)[:], b.array(name)[:]), name
    # a second run over the same inputs resumes: nothing recomputed
    assert extract_features(encoder, manifest, cfg.layout.real_images, url).n_computed == 0  # type: ignore[arg-type]


def test_tables_on_s3_through_duckdb_views(tmp_path, s3_bucket):
    root = f"{s3_bucket}/run/tables"
    db = tmp_path / "results.duckdb"
    for model in ("m1", "m2"):
        df = pl.DataFrame({"model_key": [model] * 5, "concept": list(range(5))})
        write_table_partition(root, "concept_stats", model, df)
    # a sharded partition: two workers' part files, no merge
    for part in (0, 1):
        df = pl.DataFrame({"model_key": ["m3"] * 3, "concept": [10 * part + i for i in range(3)]})
        write_table_part(root, "concept_stats", "m3", part, df)
    assert refresh_views(db, root) == ["concept_stats"]
    counts = query(db, "SELECT model_key, count(*) n FROM concept_stats GROUP BY 1 ORDER BY 1")
    assert counts.rows() == [("m1", 5), ("m2", 5), ("m3", 6)]
    assert read_table(root, "concept_stats", "m3")["concept"].sort().to_list() == [
        0,
        1,
        2,
        10,
        11,
        12,
    ]
    assert read_table(root, "concept_stats").height == 16
    # replacing a partition: the old rows are gone, never doubled
    write_table_partition(
        root, "concept_stats", "m3", pl.DataFrame({"model_key": ["m3"], "concept": [7]})
    )
    refresh_views(db, root)
    assert query(db, "SELECT count(*) n FROM concept_stats WHERE model_key = 'm3'")["n"][0] == 1

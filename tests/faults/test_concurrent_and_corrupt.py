"""Two model partitions writing statistics at once (separate processes, with a reader querying
all along): no lock failure, no lost rows. Corrupt inputs mid-stream: recorded, skipped and
counted, never a crash."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import polars as pl
import torch

from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import query
from tests.faults.table_workers import ROUNDS, _reader, _writer


def test_two_partitions_write_statistics_at_once(tmp_path):
    tables, db = tmp_path / "tables", tmp_path / "results.duckdb"
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    writers_done = ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(str(tables), str(db), m, out))
        for m in ("demo-a", "demo-b")
    ]
    procs.append(ctx.Process(target=_reader, args=(str(db), out, writers_done)))
    for p in procs:
        p.start()
    results = []
    while len(results) < len(procs):
        results.append(out.get(timeout=120))
        if sum(r[0] != "reader" for r in results) == 2:
            writers_done.set()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for result in results:
        assert result[1] is None, result
    (reader,) = [r for r in results if r[0] == "reader"]
    assert reader[2] > 0  # queries ran while the writers refreshed
    counts = query(
        db,
        "SELECT model_key, count(*) n, min(round) lo, max(round) hi FROM "
        "concept_stats GROUP BY 1 ORDER BY 1",
    )
    assert counts.rows() == [
        ("demo-a", 500, ROUNDS - 1, ROUNDS - 1),
        ("demo-b", 500, ROUNDS - 1, ROUNDS - 1),
    ]


def test_truncated_image_and_nan_row_mid_stream_are_recorded_and_skipped(demo_world, tmp_path):
    _, cfg = demo_world
    manifest = read_manifest(cfg.layout.real_images)
    # a third bad input, late in the stream: an image truncated on disk by a crashed copy
    late = manifest.filter(pl.col("status") == "ok").row(80, named=True)
    image = cfg.layout.real_images / late["path"]
    image.write_bytes(image.read_bytes()[:100])
    encoder = load_encoder(cfg.encoder)
    nan_id, nan_path = manifest.filter(pl.col("status") == "ok").select("image_id", "path").row(50)
    # the pixels as the run's image pipeline hands this image to the encoder
    nan_pixels = encoder.preprocess([encoder.images.load(cfg.layout.real_images / nan_path)])[0]
    real_forward = encoder.forward

    def forward(pixels):  # the encoder blows up numerically on one image
        feats = real_forward(pixels)
        for j in range(pixels.shape[0]):
            if torch.equal(pixels[j], nan_pixels):
                feats[j] = np.nan
        return feats

    encoder.forward = forward  # type: ignore[method-assign]
    summary = extract_features(encoder, manifest, cfg.layout.real_images, tmp_path / "f.zarr")
    by_status = summary.n_invalid_by_status
    assert by_status.get("nonfinite_features") == 1
    assert sum(v for k, v in by_status.items() if k.startswith("decode_error")) == 3
    assert summary.n_valid == 96 - 4 and summary.n_rows == 96
    store = RowStore.open(tmp_path / "f.zarr")
    status = dict(zip(store.image_ids(), store.status(), strict=True))
    assert status[nan_id] == "nonfinite_features"
    assert status[late["image_id"]].startswith("decode_error")
    assert store.is_complete()
    valid = store.valid()
    assert np.isfinite(np.asarray(store.array("tokens")[:])[valid]).all()
    # the asset's metadata counts them (the Dagster layer's own formatter)
    from blindspot_assets.defs.features import feature_metadata
    from blindspot_assets.shards import FeatureShards

    meta = feature_metadata(tmp_path / "f.zarr", FeatureShards.of(summary, {}))
    assert meta["n_valid"] == 92
    assert meta["n_invalid_by_status"].value == by_status

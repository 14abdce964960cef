"""Feature extraction into the Zarr store: every row kept, bad images and non-finite features
recorded with a status, resumable, sharded ranges equal to one pass; the encoder loads by path
or hub id through one loader."""

import numpy as np
import polars as pl
import pytest

from blindspot_assets.config import parse_config
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.sources.demo import fetch
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict


@pytest.fixture
def cfg(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=40)
    raw["real"].update({"corrupt_images": 2, "empty_captions": 3})
    return parse_config(raw)


def test_features_keep_every_row_and_record_bad_images(cfg):
    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    encoder = load_encoder(cfg.encoder)
    assert encoder.n_tokens == 1 + 4 + (64 // 8) ** 2
    summary = extract_features(encoder, real, cfg.layout.real_images, cfg.layout.features("real"))
    assert summary.n_rows == 40 and summary.n_valid == 38
    assert all(s.startswith("decode_error") for s in summary.n_invalid_by_status)
    store = RowStore.open(cfg.layout.features("real"))
    tokens = store.array("tokens")
    assert tokens.shape == (40, encoder.n_tokens, encoder.dim) and tokens.dtype == np.float16
    # The stored tokens are the model's last_hidden_state for the image as the run's image
    # pipeline hands it over (decoded, re-encoded as JPEG q75: the same for both sides).
    img = encoder.images.load(cfg.layout.real_images / real["path"][5])
    direct = encoder.encode([img])[0]
    np.testing.assert_allclose(tokens[5].astype(np.float32), direct, atol=2e-2, rtol=1e-2)
    # A second run computes nothing.
    again = extract_features(encoder, real, cfg.layout.real_images, cfg.layout.features("real"))
    assert again.n_computed == 0 and again.n_valid == 38


def test_nonfinite_features_are_recorded_not_stored(cfg, monkeypatch):
    real = (
        fetch(cfg.real, cfg.layout.real_images, cfg.seed)
        .filter(pl.col("status") == "ok")
        .slice(2, 10)
    )
    encoder = load_encoder(cfg.encoder)
    clean = encoder.forward

    def poisoned(pixels):
        feats = clean(pixels)
        feats[1, 3, 0] = np.nan
        return feats

    monkeypatch.setattr(encoder, "forward", poisoned)
    summary = extract_features(encoder, real, cfg.layout.real_images, cfg.layout.features("x"))
    assert summary.n_invalid_by_status == {"nonfinite_features": 1}
    assert summary.n_valid == 9


def test_encoder_loads_by_id_through_the_same_code_and_fails_clearly_offline(cfg):
    from dataclasses import replace

    with pytest.raises(OSError, match="dinov2-with-registers-base"):
        load_encoder(
            replace(
                cfg.encoder, model_id="facebook/dinov2-with-registers-base", init_random_tiny=False
            )
        )


def test_real_manifest_on_disk_matches(cfg):
    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    assert read_manifest(cfg.layout.real_images).equals(real)


def test_sharded_parallel_decode_fills_the_same_store_as_one_inline_pass(cfg):
    from dataclasses import replace

    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    inline = load_encoder(replace(cfg.encoder, decode_workers=0, batch_size=8))
    ref = extract_features(inline, real, cfg.layout.real_images, cfg.layout.features("a"))
    threaded = load_encoder(replace(cfg.encoder, decode_workers=3, batch_size=8))
    path = cfg.layout.features("b")
    from blindspot_assets.encoders.dinov2 import open_feature_store

    shards = open_feature_store(threaded, real, path).shard_ranges(3)
    assert len(shards) == 3
    for rows in reversed(shards):  # any order; no shard finishes the store
        part = extract_features(
            threaded, real, cfg.layout.real_images, path, rows=rows, finish=False
        )
        assert part.n_rows == rows[1] - rows[0]
        assert RowStore.open(path).is_complete(rows)
    assert not RowStore.open(path).attrs.get("completed_at")
    done = extract_features(threaded, real, cfg.layout.real_images, path)
    assert done.n_computed == 0 and done.n_valid == ref.n_valid == 38
    a, b = RowStore.open(cfg.layout.features("a")), RowStore.open(path)
    assert b.attrs.get("completed_at") and a.status() == b.status()
    np.testing.assert_array_equal(a.valid(), b.valid())
    np.testing.assert_array_equal(a.array("tokens")[:], b.array("tokens")[:])

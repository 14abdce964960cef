import numpy as np
import polars as pl
import pytest

from blindspot_assets.config import ConfigError, ModelSpec, parse_config
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.generators.base import derive_seed
from blindspot_assets.generators.registry import build_generator, validate_model
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sources.demo import fetch
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict


@pytest.fixture
def cfg(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=40)
    raw["real"].update({"corrupt_images": 2, "empty_captions": 3})
    return parse_config(raw)


def test_generation_records_empty_captions_and_resumes(cfg):
    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    gen = build_generator(cfg.model("demo-a"))
    out = cfg.layout.generated_images("demo-a")
    manifest, summary = generate_image_set(gen, "demo-a", real, out, batch_size=8)
    assert summary.failures_by_reason == {"empty_caption": 3}
    assert summary.n_generated == 37 and summary.n_reused == 0
    assert set(manifest["image_id"]) == set(real["image_id"])
    first = (out / "demo-000010.png").read_bytes()
    (out / "demo-000011.png").unlink()  # an interrupted run lost one image
    (out / "demo-000012.png").write_bytes(b"half a png")  # and left one half-written
    _, again = generate_image_set(gen, "demo-a", real, out, batch_size=8)
    assert again.n_generated == 2 and again.n_reused == 35
    assert (out / "demo-000010.png").read_bytes() == first
    seeds = dict(zip(manifest["image_id"], manifest["seed"], strict=True))
    assert seeds["demo-000010"] == derive_seed("demo-a", "demo-000010", 0)


class _Flaky:
    """A generator that fails on one prompt: one bad prompt costs one image, not the batch."""

    def lineage(self):
        return {"family": "flaky"}

    def generate(self, requests):
        if any("boom" in r.caption for r in requests):
            raise RuntimeError("boom prompt")
        from PIL import Image

        return [Image.new("RGB", (8, 8)) for _ in requests]


def test_generation_failures_are_recorded_per_image(tmp_path):
    real = pl.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "path": ["", "", ""],
            "caption": ["x", "boom", "y"],
            "status": ["ok"] * 3,
            "detail": [""] * 3,
        }
    )
    manifest, summary = generate_image_set(_Flaky(), "f", real, tmp_path / "g", batch_size=3)
    assert summary.failures_by_reason == {"generation_error": 1}
    row = manifest.filter(pl.col("image_id") == "b").row(0, named=True)
    assert row["status"] == "generation_error" and "boom prompt" in row["detail"]
    assert (tmp_path / "g" / "a.png").exists() and (tmp_path / "g" / "c.png").exists()


def test_unknown_family_names_the_field():
    with pytest.raises(ConfigError, match=r"models\.x\.family 'dalle'.*known families"):
        validate_model(ModelSpec("x", "dalle", {}))


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

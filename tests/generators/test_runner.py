"""Generating an image set: empty captions and failed prompts are recorded per image, an
interrupted run resumes with the same seeds, and an unknown family names the field."""

import polars as pl
import pytest

from blindspot_assets.config import ConfigError, ModelSpec, parse_config
from blindspot_assets.generators.base import derive_seed
from blindspot_assets.generators.registry import build_generator, validate_model
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sources.demo import fetch
from tests.conftest import demo_config_dict


def test_generation_records_empty_captions_and_resumes(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=40)
    raw["real"].update({"corrupt_images": 2, "empty_captions": 3})
    cfg = parse_config(raw)
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

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


class _BatchSensitive:
    """A generator whose pixels depend on the whole batch it was made in, as floating-point
    reductions do on some CPUs: an image is only reproducible inside the same batch."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def lineage(self):
        return {"family": "batch-sensitive"}

    def generate(self, requests):
        from PIL import Image

        self.calls.append([r.image_id for r in requests])
        mix = sum(r.seed for r in requests) % 251
        return [Image.new("RGB", (8, 8), (r.seed % 251, mix, len(requests))) for r in requests]


def _ids(n: int) -> pl.DataFrame:
    ids = [f"im-{i:03d}" for i in range(n)]
    return pl.DataFrame(
        {
            "image_id": ids,
            "path": [""] * n,
            "caption": ["" if i == 5 else f"caption {i}" for i in range(n)],
            "status": ["ok"] * n,
            "detail": [""] * n,
        }
    )


def test_resume_and_shards_rebuild_the_same_batches(tmp_path):
    """Fresh, resumed and sharded runs make every image inside the same fixed batch (rows
    [j·4, j·4+4) of the image order), so even a batch-sensitive generator gives the same bytes."""
    real = _ids(19)
    fresh = tmp_path / "fresh"
    gen = _BatchSensitive()
    generate_image_set(gen, "m", real, fresh, batch_size=4)
    assert gen.calls[1] == ["im-004", "im-006", "im-007"]  # im-005 has no caption
    reference = {p.name: p.read_bytes() for p in fresh.glob("*.png")}
    assert len(reference) == 18

    for lost in (["im-009"], ["im-001", "im-010", "im-018"]):  # interrupted runs
        for name in lost:
            (fresh / f"{name}.png").unlink()
        again = _BatchSensitive()
        _, summary = generate_image_set(again, "m", real, fresh, batch_size=4)
        assert summary.n_generated == len(lost)
        assert {p.name: p.read_bytes() for p in fresh.glob("*.png")} == reference
        assert all(len(c) in (3, 4) for c in again.calls[:-1])  # whole batches recomputed

    sharded = tmp_path / "sharded"
    for rows in ((0, 8), (8, 16), (16, 19)):
        generate_image_set(_BatchSensitive(), "m", real, sharded, batch_size=4, rows=rows)
    assert {p.name: p.read_bytes() for p in sharded.glob("*.png")} == reference
    with pytest.raises(ValueError, match="not on a batch"):
        generate_image_set(_BatchSensitive(), "m", real, sharded, batch_size=4, rows=(2, 8))


def test_mistyped_model_field_stops_the_code_location_load(tmp_path):
    """``stepz`` under a stable_diffusion model: ``dagster job execute`` fails while loading the
    code location, naming the field and the nearest known one, and no run is started."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import write_config
    from tests.faults.cli_runs import cli_env, instance_at, tiny_world

    config, home = tiny_world(tmp_path)
    raw = demo_config_dict(tmp_path, n_images=32)
    raw["models"]["sd"] = {"family": "stable_diffusion", "repo": "org/tiny-sd", "stepz": 20}
    config = write_config(tmp_path, raw)
    dagster = str(Path(sys.executable).parent / "dagster")
    done = subprocess.run(
        [dagster, "job", "execute", "-m", "blindspot_assets.definitions", "-j", "blindspot_job"],
        env=cli_env(config, home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "models.sd.stepz" in done.stderr and "did you mean 'steps'?" in done.stderr
    assert instance_at(home).get_runs() == []


def test_several_images_per_caption_have_their_own_seeds_and_resume(tmp_path):
    """k = 3: rows sample-major (sample 0 is the set of one image per caption, ids and seeds
    included), sample s of image i seeded from (model, i, s); a run interrupted in the middle of
    the samples makes only the missing ones again, whole batches, the same bytes."""
    real = _ids(10)
    one = tmp_path / "one"
    single, _ = generate_image_set(_BatchSensitive(), "m", real, one, batch_size=4)
    assert "sample" not in single.columns  # k = 1: the manifest it always was

    three = tmp_path / "three"
    manifest, summary = generate_image_set(
        _BatchSensitive(), "m", real, three, batch_size=4, images_per_caption=3
    )
    assert manifest.height == 30 and summary.n_generated == 27  # im-005 has no caption
    assert manifest["image_id"].to_list()[:12] == [*single["image_id"], "im-000~s1", "im-001~s1"]
    assert manifest["sample"].to_list() == [s for s in range(3) for _ in range(10)]
    assert manifest["caption_id"].to_list() == real["image_id"].to_list() * 3
    assert manifest["seed"].to_list()[:10] == single["seed"].to_list()
    seeds = dict(zip(manifest["image_id"], manifest["seed"], strict=True))
    assert seeds["im-007~s2"] == derive_seed("m", "im-007", 0, 2)
    assert len(set(manifest["seed"])) == 30
    # sample 0's first two batches are the k = 1 batches: the same bytes
    assert (three / "im-003.png").read_bytes() == (one / "im-003.png").read_bytes()
    reference = {p.name: p.read_bytes() for p in three.glob("*.png")}
    assert set(manifest.filter(pl.col("status") == "empty_caption")["image_id"]) == {
        "im-005", "im-005~s1", "im-005~s2"
    }  # fmt: skip

    for name in ("im-002~s1", "im-009~s2"):  # killed mid-samples
        (three / f"{name}.png").unlink()
    (three / "im-004~s2.png").write_bytes(b"half")
    again = _BatchSensitive()
    _, resumed = generate_image_set(again, "m", real, three, batch_size=4, images_per_caption=3)
    assert resumed.n_generated == 3 and resumed.n_reused == 24
    assert {p.name: p.read_bytes() for p in three.glob("*.png")} == reference
    assert len(again.calls) == 3  # only the three batches that lost an image

    sharded = tmp_path / "sharded"
    for rows in ((0, 12), (12, 24), (24, 30)):
        generate_image_set(
            _BatchSensitive(), "m", real, sharded, batch_size=4, rows=rows, images_per_caption=3
        )
    assert {p.name: p.read_bytes() for p in sharded.glob("*.png")} == reference


def test_images_per_caption_in_the_config(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=8)
    raw["images_per_caption"] = 2
    raw["models"]["demo-b"]["images_per_caption"] = 3
    cfg = parse_config(raw)
    assert cfg.model("demo-a").images_per_caption == 2
    assert cfg.model("demo-b").images_per_caption == 3
    validate_model(cfg.model("demo-b"))  # not a family field: every family takes it
    raw["models"]["demo-b"]["images_per_caption"] = 0
    with pytest.raises(ConfigError, match=r"models\.demo-b\.images_per_caption.*at least 1"):
        parse_config(raw)

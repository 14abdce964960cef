"""PixArt-α and Kandinsky 2.1 / 2.2, loaded by path from tiny random pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.registry import build_generator, validate_model
from tests.generators.helpers import (
    assert_captions_condition,
    assert_reproducible,
    pixels,
    two_requests,
)
from tests.tiny_models import (
    save_tiny_kandinsky21,
    save_tiny_kandinsky21_combined,
    save_tiny_kandinsky22,
    save_tiny_kandinsky22_combined,
    save_tiny_pixart,
)

SMALL = {"height": 32, "width": 32, "steps": 2, "batch_size": 2}


def test_pixart(tmp_path: Path) -> None:
    repo = save_tiny_pixart(tmp_path / "pixart")
    params = {"repo": str(repo), "resolution_binning": False, **SMALL}
    gen = build_generator(ModelSpec("pixart", "pixart", params), device="cpu")
    assert_captions_condition(gen, "")  # PixArt's "no negative prompt" is ""
    spec = ModelSpec("pixart", "pixart", {**params, "negative_prompt": "blurry"})
    validate_model(spec)
    gen = build_generator(spec, device="cpu")
    assert_reproducible(gen, "pixart", (32, 32))
    assert_captions_condition(gen, "blurry")
    lineage = gen.lineage()
    assert lineage["pipeline_class"] == "PixArtAlphaPipeline"
    assert lineage["guidance"] == 4.5 and lineage["steps"] == 2
    assert lineage["denoised_size"] == [32, 32] and lineage["clean_caption"] is False


def test_pixart_binning_needs_a_binned_transformer(tmp_path: Path) -> None:
    repo = save_tiny_pixart(tmp_path / "pixart")
    with pytest.raises(ConfigError, match="resolution_binning: false"):
        build_generator(ModelSpec("p", "pixart", {"repo": str(repo), **SMALL}), device="cpu")


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_kandinsky_prior_plus_decoder(tmp_path: Path, version: str) -> None:
    save = save_tiny_kandinsky21 if version == "2.1" else save_tiny_kandinsky22
    decoder, prior = save(tmp_path / "decoder", tmp_path / "prior")
    negative = "blurry" if version == "2.1" else None
    params = {"repo": str(decoder), "prior_repo": str(prior), "prior_steps": 2, **SMALL}
    spec = ModelSpec("kandinsky", "kandinsky", {**params, "negative_prompt": negative})
    validate_model(spec)
    gen = build_generator(spec, device="cpu")
    assert_reproducible(gen, "kandinsky", (32, 32))
    assert_captions_condition(gen, negative)
    lineage = gen.lineage()
    assert lineage["kandinsky_version"] == version and lineage["kandinsky_mode"] == "prior+decoder"
    assert lineage["prior_steps"] == 2 and lineage["prior_guidance"] == 4.0
    assert [c["source"] for c in lineage["checkpoints"]] == ["local", "local"]


def test_kandinsky_auto_pipeline_matches_prior_plus_decoder(tmp_path: Path) -> None:
    """AutoPipelineForText2Image on a combined folder loads 2.2 and 2.1; with the same weights,
    the two-stage form makes the very same images (the same calls, the same generators)."""
    for version, save in (
        ("2.2", save_tiny_kandinsky22_combined),
        ("2.1", save_tiny_kandinsky21_combined),
    ):
        repo = save(tmp_path / f"k{version}")
        spec = ModelSpec("k", "kandinsky", {"repo": str(repo), "prior_steps": 2, **SMALL})
        gen = build_generator(spec, device="cpu")
        images = assert_reproducible(gen, "k", (32, 32))
        assert_captions_condition(gen, None)
        negative = ModelSpec("k", "kandinsky", {**spec.params, "negative_prompt": "blurry"})
        with pytest.raises(ConfigError, match="models.k.negative_prompt.*give prior_repo"):
            build_generator(negative, device="cpu")
        assert gen.lineage()["kandinsky_mode"] == "auto_pipeline"
        assert gen.lineage()["kandinsky_version"] == version
    decoder, prior = save_tiny_kandinsky21(tmp_path / "decoder", tmp_path / "prior")
    params = {"repo": str(decoder), "prior_repo": str(prior), "prior_steps": 2, **SMALL}
    apart = build_generator(ModelSpec("k", "kandinsky", params), device="cpu")
    for a, b in zip(apart.generate(two_requests("k")), images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))


def test_kandinsky_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models.k.prior_repo: local path .* does not exist"):
        validate_model(ModelSpec("k", "kandinsky", {"repo": "org/x", "prior_repo": "/no/prior"}))
    with pytest.raises(ConfigError, match="models.k.prior_revision"):
        validate_model(ModelSpec("k", "kandinsky", {"repo": "org/x", "prior_revision": "v1"}))
    repo = save_tiny_pixart(tmp_path / "pixart")
    with pytest.raises(ConfigError, match="not a Kandinsky"):
        build_generator(ModelSpec("k", "kandinsky", {"repo": str(repo)}), device="cpu")

"""Real images of the demo world: seeded scenes rendered with their captions.

Like LAION's, the real images are JPEG files of varied quality (``jpeg_quality: [low, high]``,
one quality drawn per image; null stores PNG), while generators write PNG: the demo has the
file-format asymmetry of a real run, and the image pipeline must remove it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.demo.world import attributes_json, caption_of, render, sample_scene
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.store.images import write_manifest

PARAMS = {"n_images", "image_size", "empty_captions", "corrupt_images", "jpeg_quality"}
DEFAULT_JPEG_QUALITY = (70, 95)


def validate(spec: SourceSpec) -> None:
    unknown = sorted(set(spec.params) - PARAMS)
    if unknown:
        raise ConfigError(f"unknown real.{unknown[0]} for the demo source; known: {sorted(PARAMS)}")
    if int(spec.params.get("n_images", 300)) < 1:
        raise ConfigError("real.n_images must be at least 1")
    _jpeg_quality(spec)


def _jpeg_quality(spec: SourceSpec) -> tuple[int, int] | None:
    raw = spec.params.get("jpeg_quality", DEFAULT_JPEG_QUALITY)
    if raw is None:
        return None
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(q, int) and 1 <= q <= 95 for q in raw)
        or raw[0] > raw[1]
    ):
        raise ConfigError(
            f"real.jpeg_quality must be [low, high] within 1..95 or null, got {raw!r}"
        )
    return int(raw[0]), int(raw[1])


def fetch(
    spec: SourceSpec, out_dir: Path, seed: int, progress: ProgressFn | None = None
) -> pl.DataFrame:
    """Render ``n_images`` scenes. ``empty_captions`` / ``corrupt_images`` plant bad inputs
    (the first ids get an empty caption / a truncated file) so the pipeline's handling of them
    can be watched end to end."""
    validate(spec)
    n = int(spec.params.get("n_images", 300))
    size = int(spec.params.get("image_size", 96))
    n_empty = int(spec.params.get("empty_captions", 0))
    n_corrupt = int(spec.params.get("corrupt_images", 0))
    quality_range = _jpeg_quality(spec)
    rng = np.random.default_rng(seed)
    # a stream of its own, so the scenes are the same whatever the file format
    quality_rng = np.random.default_rng([seed, 1])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = sample_scene(rng)
        image_id = f"demo-{i:06d}"
        quality = (
            int(quality_rng.integers(quality_range[0], quality_range[1] + 1))
            if (quality_range)
            else None
        )
        rel = f"{image_id}.jpg" if quality else f"{image_id}.png"
        path = out_dir / rel
        if not path.exists():
            image = render(scene, scene.layout_seed, size)
            if quality:
                image.save(path, format="JPEG", quality=quality)
            else:
                image.save(path)
        if i < n_corrupt:
            path.write_bytes(path.read_bytes()[:64])  # a truncated file: decodes as an error
        caption = "" if n_corrupt <= i < n_corrupt + n_empty else caption_of(scene)
        rows.append(
            {
                "image_id": image_id,
                "path": rel,
                "caption": caption,
                "status": "ok",
                "detail": "",
                "attributes": attributes_json(scene),
            }
        )
        if progress:
            progress(i + 1, n)
    df = pl.DataFrame(rows)
    write_manifest(out_dir, df)
    return df

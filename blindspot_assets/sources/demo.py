"""Real images of the demo world: seeded scenes rendered to PNG with their captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.demo.world import attributes_json, caption_of, render, sample_scene
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.store.images import write_manifest

PARAMS = {"n_images", "image_size", "empty_captions", "corrupt_images"}


def validate(spec: SourceSpec) -> None:
    unknown = sorted(set(spec.params) - PARAMS)
    if unknown:
        raise ConfigError(f"unknown real.{unknown[0]} for the demo source; known: {sorted(PARAMS)}")
    if int(spec.params.get("n_images", 300)) < 1:
        raise ConfigError("real.n_images must be at least 1")


def materialize(
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
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = sample_scene(rng)
        image_id = f"demo-{i:06d}"
        rel = f"{image_id}.png"
        path = out_dir / rel
        if not path.exists():
            render(scene, scene.layout_seed, size).save(path)
        if i < n_corrupt:
            path.write_bytes(path.read_bytes()[:64])  # a truncated PNG: decodes as an error
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

"""The demo family: a caption-conditioned procedural renderer with planted blindspots."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion
from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.demo.world import IMAGE_SIZE, Plants, parse_caption, render
from blindspot_assets.generators.base import GenerationRequest, check_family_fields

PARAMS = {
    "suppress_colors",
    "suppress_shapes",
    "exaggerate_background",
    "exaggerate_rate",
    "image_size",
    "seed",
    "batch_size",
    "memorize_from",
    "memorize_rate",
    "version",
}


class DemoGenerator:
    def __init__(self, spec: ModelSpec) -> None:
        p = spec.params
        self.spec = spec
        self.key = spec.key
        try:
            self.plants = Plants(
                suppress_colors=tuple(p.get("suppress_colors", ())),
                suppress_shapes=tuple(p.get("suppress_shapes", ())),
                exaggerate_background=p.get("exaggerate_background"),
                exaggerate_rate=float(p.get("exaggerate_rate", 0.9)),
            )
        except ValueError as exc:
            raise ConfigError(f"models.{spec.key}: {exc}") from exc
        self.size = int(p.get("image_size", IMAGE_SIZE))
        self.version = str(p.get("version", "1"))
        # Memorisation plant: for a fraction of ids, return the training image itself.
        self.memorize_from = Path(p["memorize_from"]) if p.get("memorize_from") else None
        self.memorize_rate = float(p.get("memorize_rate", 0.0))

    def lineage(self) -> dict[str, Any]:
        return {
            "family": "demo",
            "model_key": self.key,
            "version": self.version,
            "resolved_version": demo_version(self.spec),
            "planted_truth": self.plants.truth(),
            "plants": self.plants.as_dict(),
            "image_size": self.size,
            "memorize_rate": self.memorize_rate,
        }

    def _memorized(self, req: GenerationRequest) -> Image.Image | None:
        if self.memorize_from is None or (req.seed % 10_000) / 10_000 >= self.memorize_rate:
            return None
        for ext in (".png", ".jpg"):
            path = self.memorize_from / f"{req.image_id}{ext}"
            if path.exists():
                return Image.open(path).convert("RGB")
        return None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        images = []
        for req in requests:
            copy = self._memorized(req)
            if copy is not None:
                images.append(copy)
                continue
            rng = np.random.default_rng(req.seed)
            scene = self.plants.apply(parse_caption(req.caption), rng)
            images.append(render(scene, req.seed, self.size))
        return images


def demo_version(spec: ModelSpec) -> str:
    """A demo model's 'checkpoint' is its settings: their hash is its version."""
    settings = json.dumps(spec.params, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(settings.encode()).hexdigest()[:32]


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    return [CheckpointVersion(f"demo:{spec.key}", None, demo_version(spec), "local")]


def validate(spec: ModelSpec) -> None:
    check_family_fields(spec, PARAMS)
    DemoGenerator(spec)


def build(spec: ModelSpec, device: str | None = None) -> DemoGenerator:
    validate(spec)
    return DemoGenerator(spec)

"""The control family: a null model that "generates", for each caption, that caption's own real
image, through the generated-image path (written as PNG, as diffusers writes its images).

A control has no blindspot by construction, so every concept flagged on it is an artefact of
the pipeline (pairing, decoding, resizing, file formats), never of a model. Run one beside the
models of every comparison: its flag count is the run's false-flag floor.

Family ``control``; fields:

    real_images: the real set's folder (default: the run's own real images)
    batch_size, seed: accepted for symmetry with the other families (seeds are not used)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion
from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.base import GenerationRequest, check_family_fields
from blindspot_assets.store.images import read_manifest

PARAMS = {"real_images", "batch_size", "seed"}
CARRIES_REAL_HISTORY = True
"""Its images are the real files decoded: they already went through their real file's JPEG
encode, so the matched-history policy gives them none again (a second encode with 4:2:0
chroma is not idempotent, and would flag concepts on a control)."""
VERSION = "control:copy-of-real-v1"


class ControlGenerator:
    def __init__(self, spec: ModelSpec) -> None:
        self.key = spec.key
        self.real_dir = Path(str(spec.params["real_images"]))
        self._paths: dict[str, str] | None = None

    def lineage(self) -> dict[str, Any]:
        return {
            "family": "control",
            "model_key": self.key,
            "control": True,
            "real_images": str(self.real_dir),
            "resolved_version": VERSION,
            "planted_truth": {"suppressed": [], "exaggerated": []},
        }

    def _path(self, image_id: str) -> Path:
        if self._paths is None:
            manifest = read_manifest(self.real_dir)
            self._paths = dict(zip(manifest["image_id"], manifest["path"], strict=True))
        if not self._paths.get(image_id):
            raise FileNotFoundError(f"the real set has no image {image_id!r}")
        return self.real_dir / self._paths[image_id]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        images = []
        for req in requests:
            with Image.open(self._path(req.image_id)) as im:
                im.load()
                images.append(im.convert("RGB"))
        return images


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    return [CheckpointVersion(f"control:{spec.key}", None, VERSION, "local")]


def validate(spec: ModelSpec) -> None:
    check_family_fields(spec, PARAMS)
    if not spec.params.get("real_images"):
        raise ConfigError(f"models.{spec.key}.real_images is required for the control family")


def build(spec: ModelSpec, device: str | None = None) -> ControlGenerator:
    validate(spec)
    return ControlGenerator(spec)

"""Pre-generated sets: images made elsewhere (a closed model, another machine), one per real image,
named by the real image's id. Same partition mechanism as any model, no generation.

Family ``pregenerated``; fields:

    path:     the folder (required). Images are found as ``<image_id>.<png|jpg|jpeg|webp>``
              anywhere below it, or through ``manifest``; with ``images_per_caption`` k > 1,
              sample s ≥ 1 of a caption as ``<image_id>~s<s>.<ext>`` (``sample_image_id``).
    manifest: optional CSV or parquet inside or beside ``path`` with columns ``image_id`` and
              ``path`` (relative to ``path``), for files named otherwise.
    model:    free text naming what made the images (kept in the lineage)
    batch_size, seed: accepted for symmetry with the other families (seeds are not used)

The version (data version of the model checkpoint) is the content hash of the folder. A real
image with no pregenerated counterpart raises for that image alone; the runner records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion, resolve_checkpoint
from blindspot_assets.config import ModelSpec
from blindspot_assets.generators.base import GenerationRequest, check_family_fields
from blindspot_assets.generators.diffusers_pipeline import fail
from blindspot_assets.sources.intake import file_under
from blindspot_assets.store.images import sample_image_id

PARAMS = {"path", "manifest", "model", "batch_size", "seed"}
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def _folder(spec: ModelSpec) -> Path:
    raw = spec.params.get("path")
    if not isinstance(raw, str) or not raw:
        raise fail(spec, "path", "missing", "set path: /folder/of/<image_id>.png images")
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise fail(
            spec,
            "path",
            f"folder {folder} does not exist",
            "point it at the folder of pre-generated images",
            missing=True,
        )
    return folder


def _manifest_path(spec: ModelSpec, folder: Path) -> Path | None:
    path = file_under(spec.params.get("manifest"), folder)
    if path is not None and not path.is_file():
        raise fail(
            spec, "manifest", f"{path} does not exist", "give a CSV/parquet inside path", True
        )
    return path


def validate(spec: ModelSpec) -> None:
    check_family_fields(spec, PARAMS)
    _manifest_path(spec, _folder(spec))


def index_folder(spec: ModelSpec) -> dict[str, Path]:
    """image id → file."""
    folder = _folder(spec)
    manifest = _manifest_path(spec, folder)
    if manifest is not None:
        df = pl.read_parquet(manifest) if manifest.suffix == ".parquet" else pl.read_csv(manifest)
        missing = {"image_id", "path"} - set(df.columns)
        if missing:
            raise fail(
                spec,
                "manifest",
                f"{manifest} lacks column(s) {sorted(missing)}",
                "give it image_id and path columns",
            )
        return {str(i): folder / str(p) for i, p in zip(df["image_id"], df["path"], strict=True)}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in found:
            raise fail(
                spec,
                "path",
                f"two images for id {path.stem!r}: {found[path.stem]} and {path}",
                "keep one file per image id, or give a manifest",
            )
        found[path.stem] = path
    return found


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    return [resolve_checkpoint(str(_folder(spec)))]


class PregeneratedImages:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.folder = _folder(spec)
        self.files = index_folder(spec)
        self._checkpoints = checkpoints(spec)

    def lineage(self) -> dict[str, Any]:
        return {
            "family": "pregenerated",
            "model_key": self.spec.key,
            "model": self.spec.params.get("model", ""),
            "repo": str(self.folder.resolve()),
            "version": self._checkpoints[0].data_version,
            "checkpoints": [c.as_dict() for c in self._checkpoints],
            "n_images": len(self.files),
            "seed_policy": "none: the images were made elsewhere",
        }

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        images = []
        for req in requests:
            image_id = sample_image_id(req.image_id, req.sample)
            path = self.files.get(image_id)
            if path is None or not path.is_file():
                raise FileNotFoundError(f"no pre-generated image for {image_id} in {self.folder}")
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        return images


def build(spec: ModelSpec, device: str | None = None) -> PregeneratedImages:
    validate(spec)
    return PregeneratedImages(spec)

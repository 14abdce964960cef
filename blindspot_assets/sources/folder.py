"""A plain folder of images with captions.

Source kind ``folder``; fields under ``real:``:

    path:      the folder (required)
    manifest:  optional CSV or parquet (inside ``path`` or absolute) with columns ``path``
               (relative to the folder) and ``caption``, and optionally ``image_id``. Without it,
               every image below the folder is taken, its caption read from a sidecar
               ``<name>.txt`` beside it.
    copy:      false (default): the manifest points at the files where they are.
               true: each image is normalised (see ``sources/intake.normalise``) and stored in
               the set folder.
    min_side, max_pixels, max_bytes, max_short_side: the image checks (``ImageChecks``)
    workers:   files checked in parallel (default 8)

Ids: the manifest's ``image_id`` column when it has one, else the content hash of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from blindspot_assets.checkpoint_versions import MissingInput
from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.sources.intake import (
    IMAGE_EXTENSIONS,
    LOCAL_PARAMS,
    ImageChecks,
    LocalImage,
    existing_dir,
    file_under,
    ingest_local,
    unknown_params,
)
from blindspot_assets.store.images import write_manifest

PARAMS = {*LOCAL_PARAMS, "manifest"}


def _manifest_file(spec: SourceSpec, folder: Path) -> Path | None:
    path = file_under(spec.params.get("manifest"), folder)
    if path is None:
        return None
    if not path.is_file():
        raise MissingInput(
            f"real.manifest: {path} does not exist; fix: give a CSV or parquet "
            "with path and caption columns, relative to real.path or absolute"
        )
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(
            f"real.manifest: {path.name} is neither .csv nor .parquet; fix: "
            "convert it, or drop real.manifest to use sidecar .txt captions"
        )
    return path


def validate(spec: SourceSpec) -> None:
    unknown_params(spec, PARAMS)
    _manifest_file(spec, existing_dir(spec, "path"))
    ImageChecks.from_params(spec.params, "real")
    if not isinstance(spec.params.get("copy", False), bool):
        raise ConfigError("real.copy must be true or false")


def _from_manifest(spec: SourceSpec, folder: Path, manifest: Path) -> list[LocalImage]:
    df = (
        pl.read_parquet(manifest)
        if manifest.suffix.lower() == ".parquet"
        else pl.read_csv(manifest, infer_schema=False)
    )
    for column in ("path", "caption"):
        if column not in df.columns:
            raise ConfigError(
                f"real.manifest: {manifest} has no {column!r} column (columns: {df.columns}); "
                f"fix: add a {column!r} column"
            )
    ids = df["image_id"].cast(pl.String).to_list() if "image_id" in df.columns else [None] * len(df)
    if "image_id" in df.columns and df["image_id"].is_duplicated().any():
        raise ConfigError(f"real.manifest: {manifest} repeats image ids; fix: make them unique")
    return [
        LocalImage(folder / str(p), caption, image_id)
        for p, caption, image_id in zip(df["path"], df["caption"], ids, strict=True)
    ]


def _sidecar_caption(image: Path) -> str | None:
    sidecar = image.with_suffix(".txt")
    return (
        sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else None
    )


def _from_sidecars(folder: Path) -> list[LocalImage]:
    images = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [LocalImage(p, _sidecar_caption(p)) for p in images]


def list_images(spec: SourceSpec) -> list[LocalImage]:
    folder = existing_dir(spec, "path")
    manifest = _manifest_file(spec, folder)
    items = _from_manifest(spec, folder, manifest) if manifest else _from_sidecars(folder)
    if not items:
        raise ConfigError(
            f"real.path: no images found in {folder}; fix: point it at a folder of "
            f"{'/'.join(IMAGE_EXTENSIONS)} files"
        )
    return items


def fetch(
    spec: SourceSpec, out_dir: Path, seed: int, progress: ProgressFn | None = None
) -> pl.DataFrame:
    """Check and list every image; ``seed`` is unused (a folder is taken whole)."""
    validate(spec)
    checks = ImageChecks.from_params(spec.params, "real")
    rows: list[dict[str, Any]] = ingest_local(
        list_images(spec),
        out_dir,
        checks,
        copy=bool(spec.params.get("copy", False)),
        workers=int(spec.params.get("workers", 8)),
        progress=progress,
    )
    df = pl.DataFrame(rows, infer_schema_length=None)
    write_manifest(out_dir, df)
    return df

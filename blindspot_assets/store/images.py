"""Image sets on disk: a folder of image files plus ``manifest.parquet``, one row per image.

Manifest columns (real and generated sets alike):
  image_id  str   stable id (img2dataset key, content hash, or the real id a generated image pairs with)
  path      str   file path relative to the set's folder ("" when the image could not be had)
  caption   str   the caption (the prompt, for generated sets)
  status    str   "ok", or the reason the image is missing ("http_404", "decode_error", "empty_caption", ...)
  detail    str   free text about a failure
Further columns are allowed (``attributes`` JSON for the demo world, ``seed`` for generated sets).
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

MANIFEST = "manifest.parquet"
REQUIRED_COLUMNS = ("image_id", "path", "caption", "status", "detail")


def write_manifest(set_dir: Path, df: pl.DataFrame) -> Path:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest for {set_dir} lacks columns {missing}")
    if df["image_id"].is_duplicated().any():
        dupes = df.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()[:5]
        raise ValueError(f"manifest for {set_dir} has duplicate image ids, e.g. {dupes}")
    set_dir.mkdir(parents=True, exist_ok=True)
    tmp = set_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    df.write_parquet(tmp)
    os.replace(tmp, set_dir / MANIFEST)
    return set_dir / MANIFEST


def read_manifest(set_dir: Path) -> pl.DataFrame:
    path = set_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no image manifest at {path}: materialise the image asset first")
    return pl.read_parquet(path)


def ok_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("status") == "ok")

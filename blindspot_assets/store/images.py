"""Image sets on disk: a folder of image files plus ``manifest.parquet``, one row per image.

Manifest columns (real and generated sets alike):
  image_id  str   stable id (img2dataset key, content hash; a generated image: its real partner's)
  path      str   file path relative to the set's folder ("" when the image could not be had)
  caption   str   the caption (the prompt, for generated sets)
  status    str   "ok", or why the image is missing ("http_404", "decode_error", "empty_caption")
  detail    str   free text about a failure
Further columns are allowed (``attributes`` JSON for the demo world, ``seed`` for generated sets;
with several images per caption, ``caption_id`` (the real image's id) and ``sample``).

Sample s of the images generated for caption (real image) ``i`` has the id ``i`` for s = 0 — a set
of one image per caption is exactly what it always was — and ``i~s<s>`` for s ≥ 1
(``sample_image_id``); ``~s`` followed by digits ends no real image id in practice, and pairing
resolves a generated id against the real ids (``caption_of``).
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

import polars as pl
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from blindspot_assets.store.atomic import write_atomic, write_json_atomic

MANIFEST = "manifest.parquet"
SAMPLE_SEP = "~s"
# Images are stored as lossless PNG at zlib level 1: the pixels of PIL's default level 6 at a
# sixth of the CPU (256-px photo scenes: 6.6 ms against 40 ms an image, files 13 % larger).
PNG_COMPRESS_LEVEL = 1


def save_png(image: Image.Image, path: Path, pnginfo: PngInfo | None = None) -> None:
    """``image`` as a lossless PNG at ``path`` (every stored image: real, generated, probe)."""
    image.save(path, format="PNG", pnginfo=pnginfo, compress_level=PNG_COMPRESS_LEVEL)


def sample_image_id(caption_id: str, sample: int) -> str:
    """The id of sample ``sample`` generated from the caption of real image ``caption_id``."""
    return caption_id if sample == 0 else f"{caption_id}{SAMPLE_SEP}{sample}"


def split_sample_id(image_id: str) -> tuple[str, int]:
    """(caption id, sample) of a generated image id; an id without a sample suffix is sample 0."""
    head, sep, tail = image_id.rpartition(SAMPLE_SEP)
    if sep and head and tail.isdigit() and int(tail) > 0 and str(int(tail)) == tail:
        return head, int(tail)
    return image_id, 0


def caption_of(image_id: str, real_ids: Container[str]) -> tuple[str, int] | None:
    """(caption id, sample) of a generated image id among ``real_ids``; None: no real partner.
    An id that is itself a real id is that caption's sample 0."""
    if image_id in real_ids:
        return image_id, 0
    caption, sample = split_sample_id(image_id)
    return (caption, sample) if sample and caption in real_ids else None


def caption_ids(manifest: pl.DataFrame) -> list[str]:
    """Per manifest row, the real image whose caption prompted it (``caption_id``; a set of one
    image per caption has no such column: the image id is the caption's)."""
    column = "caption_id" if "caption_id" in manifest.columns else "image_id"
    return [str(i) for i in manifest[column].to_list()]


REQUIRED_COLUMNS = ("image_id", "path", "caption", "status", "detail")


def write_manifest(set_dir: Path, df: pl.DataFrame) -> Path:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest for {set_dir} lacks columns {missing}")
    if df["image_id"].is_duplicated().any():
        dupes = df.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()[:5]
        raise ValueError(f"manifest for {set_dir} has duplicate image ids, e.g. {dupes}")
    return write_atomic(set_dir / MANIFEST, df.write_parquet)


PARTS = "manifest.parts"  # one manifest file per shard while a sharded set is being made


def _part_name(rows: tuple[int, int]) -> str:
    return f"{rows[0]:010d}-{rows[1]:010d}.parquet"


def write_manifest_part(set_dir: Path, rows: tuple[int, int], df: pl.DataFrame) -> Path:
    """The manifest rows of one shard (rows ``start:stop`` of the set), written atomically."""
    return write_atomic(set_dir / PARTS / _part_name(rows), df.write_parquet)


def clear_manifest_parts(set_dir: Path, keep: list[tuple[int, int]] | None = None) -> None:
    """Remove shard manifests, but those of the ``keep`` ranges (the current shard plan)."""
    parts = set_dir / PARTS
    if not parts.exists():
        return
    wanted = {_part_name(r) for r in keep or []}
    for f in parts.iterdir():
        if f.name not in wanted:
            f.unlink()
    if not any(parts.iterdir()):
        parts.rmdir()


def merge_manifest_parts(set_dir: Path, expected_ids: list[str]) -> pl.DataFrame:
    """Concatenate the shard manifests in row order into the set's manifest.

    The parts must hold exactly ``expected_ids`` in order; anything else (a shard not done, a
    stale part) is an error naming what is missing, and the set's manifest is left as it was.
    """
    parts = sorted((set_dir / PARTS).glob("*.parquet")) if (set_dir / PARTS).exists() else []
    df = pl.concat([pl.read_parquet(f) for f in parts], how="diagonal_relaxed") if parts else None
    got = df["image_id"].to_list() if df is not None else []
    if got != expected_ids:
        missing = sorted(set(expected_ids) - set(got))
        raise RuntimeError(
            f"the shard manifests of {set_dir} do not cover the set ({len(got)} of "
            f"{len(expected_ids)} rows; missing e.g. {missing[:3]}): re-materialise to run the "
            "missing shards"
        )
    assert df is not None
    write_manifest(set_dir, df)
    clear_manifest_parts(set_dir)
    return df


def read_manifest(set_dir: Path) -> pl.DataFrame:
    path = set_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no image manifest at {path}: materialise the image asset first")
    return pl.read_parquet(path)


def ok_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("status") == "ok")


LINEAGE = "lineage.json"


def write_lineage(set_dir: Path, lineage: dict[str, object]) -> None:
    """Record what produced an image set (generator settings, planted truth, versions)."""
    write_json_atomic(set_dir / LINEAGE, lineage)


def read_lineage(set_dir: Path) -> dict[str, object]:
    import json

    path = set_dir / LINEAGE
    return json.loads(path.read_text()) if path.exists() else {}


def model_version(lineage: dict[str, object]) -> str:
    """The version string of the model that made a set: resolved revision or content hash."""
    for key in ("resolved_version", "model_version", "version", "revision"):
        if lineage.get(key):
            return str(lineage[key])
    return "unknown"

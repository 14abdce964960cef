"""Image sets on disk: a folder of image files plus ``manifest.parquet``, one row per image.

Manifest columns (real and generated sets alike):
  image_id  str   stable id (img2dataset key, content hash; a generated image: its real partner's)
  path      str   file path relative to the set's folder ("" when the image could not be had)
  caption   str   the caption (the prompt, for generated sets)
  status    str   "ok", or why the image is missing ("http_404", "decode_error", "empty_caption")
  detail    str   free text about a failure
Further columns are allowed (``attributes`` JSON for the demo world, ``seed`` for generated sets).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from blindspot_assets.store.atomic import write_atomic, write_json_atomic

MANIFEST = "manifest.parquet"
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

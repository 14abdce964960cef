"""An img2dataset output folder already on disk, in its ``files`` or ``webdataset`` layout.

- ``files``: shard folders ``00000/`` holding ``<key>.jpg|png|webp``, ``<key>.txt`` (caption),
  ``<key>.json``; beside each, ``00000.parquet`` listing every row of the shard, failures included
  (``status``, ``error_message``).
- ``webdataset``: ``00000.tar`` holding the same members, and the same ``00000.parquet``.

Source kind ``img2dataset``; fields under ``real:``:

    path:    the output folder (required)
    layout:  auto (default) | files | webdataset
    copy:    false (default): files-layout images are used where they are. Webdataset images are
             always unpacked into the set folder (once: a second run finds them there).
             true: every image is normalised and stored in the set folder.
    ids:     key (default): img2dataset's keys | content: the content hash of each image (its
             sha256 prefix, the same id the laion_parquet and folder sources give the same bytes)
    min_side, max_pixels, max_bytes, max_short_side, workers: as for the folder source

Images img2dataset saved without re-encoding are checked here like downloads are (a truncated
JPEG it kept is a ``decode_error``). Failed rows keep img2dataset's message in ``detail`` and a
reason mapped from it in ``status`` (``sources/intake.reason_from_message``).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.sources.intake import (
    IMAGE_EXTENSIONS,
    LOCAL_PARAMS,
    ImageChecks,
    LocalImage,
    existing_dir,
    ingest_local,
    manifest_row,
    reason_from_message,
    unknown_params,
)
from blindspot_assets.store.atomic import write_bytes_atomic
from blindspot_assets.store.images import write_manifest

PARAMS = {*LOCAL_PARAMS, "layout", "ids"}
LAYOUTS = ("auto", "files", "webdataset")


def validate(spec: SourceSpec) -> None:
    unknown_params(spec, PARAMS)
    if spec.params.get("ids", "key") not in ("key", "content"):
        raise ConfigError(f"real.ids: {spec.params['ids']!r}; fix: use key or content")
    detect_layout(spec, existing_dir(spec, "path"))
    ImageChecks.from_params(spec.params, "real")


def detect_layout(spec: SourceSpec, folder: Path) -> str:
    layout = str(spec.params.get("layout", "auto"))
    if layout not in LAYOUTS:
        raise ConfigError(f"real.layout: {layout!r} is not a layout; fix: use one of {LAYOUTS}")
    tars = any(folder.glob("*.tar"))
    shards = any(p.is_dir() and p.name.isdigit() for p in folder.iterdir())
    if layout == "auto":
        if tars:
            return "webdataset"
        if shards:
            return "files"
        raise ConfigError(
            f"real.path: {folder} holds neither shard folders (00000/) nor .tar shards; fix: "
            "point it at img2dataset's output_folder"
        )
    if layout == "webdataset" and not tars:
        raise ConfigError(
            f"real.layout: webdataset, but {folder} has no .tar shards; fix: "
            "set layout: files, or auto"
        )
    if layout == "files" and not shards:
        raise ConfigError(
            f"real.layout: files, but {folder} has no shard folders; fix: set "
            "layout: webdataset, or auto"
        )
    return layout


def _shard_table(parquet: Path) -> pl.DataFrame | None:
    if not parquet.is_file():
        return None
    df = pl.read_parquet(parquet)
    if "key" not in df.columns:
        return None
    return df


def _failure_rows(table: pl.DataFrame) -> list[dict[str, Any]]:
    rows = []
    failed = table.filter(pl.col("status") != "success") if "status" in table.columns else table[:0]
    for rec in failed.iter_rows(named=True):
        message = rec.get("error_message") or ""
        rows.append(
            manifest_row(
                str(rec["key"]),
                "",
                rec.get("caption"),
                reason_from_message(message),
                message,
                url=rec.get("url") or "",
            )
        )
    return rows


def _files_shard(shard: Path, table: pl.DataFrame | None) -> list[LocalImage]:
    images = {p.stem: p for p in shard.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    if table is not None and "status" in table.columns:
        ok = table.filter(pl.col("status") == "success")
        found = []
        for rec in ok.iter_rows(named=True):
            key = str(rec["key"])
            path = images.get(key, shard / f"{key}.jpg")  # missing → recorded as missing_file
            found.append(
                LocalImage(path, rec.get("caption"), key, (("url", rec.get("url") or ""),))
            )
        return found
    return [
        LocalImage(path, _caption(path.with_suffix(".txt")), key, (("url", _url(path)),))
        for key, path in sorted(images.items())
    ]


def _caption(txt: Path) -> str | None:
    return txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None


def _url(image: Path) -> str:
    meta = image.with_suffix(".json")
    if not meta.is_file():
        return ""
    try:
        return str(json.loads(meta.read_text()).get("url") or "")
    except (ValueError, AttributeError):
        return ""


def _unpack_tar(tar_path: Path, out_dir: Path) -> list[LocalImage]:
    """Members ``<key>.<ext>`` grouped by key; images written to ``out_dir/<shard>/`` unless
    already there with the same size."""
    dest = out_dir / tar_path.stem
    dest.mkdir(parents=True, exist_ok=True)
    captions: dict[str, str] = {}
    urls: dict[str, str] = {}
    images: dict[str, Path] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name).name
            key, ext = name.split(".", 1) if "." in name else (name, "")
            ext = "." + ext.lower()
            if ext == ".txt":
                captions[key] = _read_member(tar, member).decode("utf-8", errors="replace")
            elif ext == ".json":
                try:
                    urls[key] = str(json.loads(_read_member(tar, member)).get("url") or "")
                except (ValueError, AttributeError):
                    urls[key] = ""
            elif ext in IMAGE_EXTENSIONS:
                target = dest / f"{key}{ext}"
                if not (target.is_file() and target.stat().st_size == member.size):
                    write_bytes_atomic(target, _read_member(tar, member))
                images[key] = target
    return [
        LocalImage(path, captions.get(key), key, (("url", urls.get(key, "")),))
        for key, path in sorted(images.items())
    ]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    return fh.read() if fh is not None else b""


def fetch(
    spec: SourceSpec, out_dir: Path, seed: int, progress: ProgressFn | None = None
) -> pl.DataFrame:
    """Take the whole output folder; ``seed`` is unused."""
    validate(spec)
    folder = existing_dir(spec, "path")
    layout = detect_layout(spec, folder)
    checks = ImageChecks.from_params(spec.params, "real")
    items: list[LocalImage] = []
    failures: list[dict[str, Any]] = []
    shards = (
        sorted(folder.glob("*.tar"))
        if layout == "webdataset"
        else sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    )
    for shard in shards:
        table = _shard_table(folder / f"{shard.stem}.parquet")
        if table is not None:
            failures.extend(_failure_rows(table))
        items.extend(
            _unpack_tar(shard, out_dir) if layout == "webdataset" else _files_shard(shard, table)
        )
    if spec.params.get("ids", "key") == "content":
        items = [replace(item, image_id=None) for item in items]
    rows = ingest_local(
        items,
        out_dir,
        checks,
        copy=bool(spec.params.get("copy", False)),
        workers=int(spec.params.get("workers", 8)),
        progress=progress,
    )
    df = pl.DataFrame(rows + failures, infer_schema_length=None)
    if df.is_empty():
        raise ConfigError(
            f"real.path: no img2dataset rows found in {folder}; fix: check the "
            "folder, or that the download finished"
        )
    write_manifest(out_dir, df)
    return df

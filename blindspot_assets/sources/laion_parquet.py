"""A seeded uniform sample of a LAION-style parquet (Re-LAION-2B-en research-safe: ``url``,
``caption``), downloaded, checked and stored.

Source kind ``laion_parquet``; fields under ``real:``:

    parquet:        a file, a glob (``/data/relaion2B-en/*.parquet``) or a list of them (required)
    n_images:       how many images the set should hold (default 10000, the paper's)
    max_candidates: how many sampled rows may be tried in all, to top the set up after failures
                    (default 2 × n_images)
    url_col, caption_col: column names (default url, caption)
    timeout_s:      per connect / per read (default 10); a whole download gets 3× that
    workers:        parallel downloads (default 16)
    retry_transient: on a later run, try again rows that failed with timeout, connection_error,
                    http_429 or http_5xx (default false: a recorded failure stays)
    user_agent:     sent with every request
    downloader:     httpx (default) | img2dataset (see ``sources/download.py``)
    min_side, max_pixels, max_bytes, max_short_side: the image checks (``sources/intake``)

The sample: all rows of all files are numbered in sorted-file order; ``max_candidates`` distinct
row numbers are drawn uniformly, in random order, from ``numpy.random.default_rng(seed)``; only
the row groups holding them are read. Duplicate URLs are taken once. Rows are tried in that order
until ``n_images`` have an image: the set is the first ``n_images`` good rows of the order, so a
top-up run gives the same set as a run that never stopped.

Resize/crop policy: EXIF orientation applied, RGB, downscaled so the shorter side is at most
``max_short_side`` (512), never upscaled or cropped (the encoder resizes and center-crops), stored
as lossless PNG at ``<id[:2]>/<id>.png``. The id is the content hash of the bytes downloaded.

Resume: every finished row is appended to ``download_log.jsonl`` in the set folder as it
finishes; a later run reads it and fetches only rows never tried (and, with ``retry_transient``,
transient failures), and any logged image whose file has gone missing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from blindspot_assets.checkpoint_versions import MissingInput
from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.sources.download import DOWNLOADERS, DownloadSettings, Fetched, fetch_all
from blindspot_assets.sources.intake import (
    CHECK_PARAMS,
    ImageChecks,
    has_caption,
    manifest_row,
    unknown_params,
    url_id,
)
from blindspot_assets.store.images import write_manifest

PARAMS = {
    "parquet",
    "n_images",
    "max_candidates",
    "url_col",
    "caption_col",
    "timeout_s",
    "workers",
    "retry_transient",
    "user_agent",
    "downloader",
    *CHECK_PARAMS,
}
LOG = "download_log.jsonl"
CANDIDATES = "candidates.parquet"
TRANSIENT = ("timeout", "connection_error", "http_429")


def parquet_files(spec: SourceSpec) -> list[Path]:
    raw = spec.params.get("parquet")
    if raw is None:
        raise ConfigError(
            "real.parquet is required for the laion_parquet source; fix: set it to "
            "a parquet file, a glob or a list of them"
        )
    patterns = raw if isinstance(raw, list) else [raw]
    files: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(os.path.expandvars(str(pattern)))
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
        missing = [m for m in matches if not Path(m).is_file()]
        if not matches or missing:
            unset = "$" in expanded
            raise MissingInput(
                f"real.parquet: {missing[0] if missing else pattern} matches no file"
                f"{' (an environment variable in it is unset)' if unset else ''}; fix: "
                "download the metadata parquet (e.g. laion/relaion2B-en-research-safe) and "
                "point real.parquet at it"
            )
        files.extend(Path(m) for m in matches)
    return sorted(set(files))


def _columns(spec: SourceSpec) -> tuple[str, str]:
    return str(spec.params.get("url_col", "url")), str(spec.params.get("caption_col", "caption"))


def _positive(spec: SourceSpec, name: str, default: int) -> int:
    value = spec.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"real.{name}: {value!r} is not a positive integer")
    return value


def validate(spec: SourceSpec) -> None:
    unknown_params(spec, PARAMS)
    url_col, caption_col = _columns(spec)
    for path in parquet_files(spec):
        names = pl.scan_parquet(path).collect_schema().names()
        for field, column in (("caption_col", caption_col), ("url_col", url_col)):
            if column not in names:
                raise ConfigError(
                    f"real.{field}: {path.name} has no column {column!r} (columns: {names}); "
                    f"fix: set real.{field} to the column holding the "
                    f"{'captions' if field == 'caption_col' else 'image URLs'}"
                )
    n = _positive(spec, "n_images", 10_000)
    if _positive(spec, "max_candidates", 2 * n) < n:
        raise ConfigError("real.max_candidates must be at least real.n_images")
    ImageChecks.from_params(spec.params, "real")
    downloader = str(spec.params.get("downloader", "httpx"))
    if downloader not in DOWNLOADERS:
        raise ConfigError(f"real.downloader: {downloader!r}; fix: use one of {sorted(DOWNLOADERS)}")


def row_counts(files: list[Path]) -> list[int]:
    """Rows per file, from the parquet footers (nothing else is read)."""
    return [int(pl.scan_parquet(f).select(pl.len()).collect().item()) for f in files]


def candidates(spec: SourceSpec, out_dir: Path, seed: int) -> pl.DataFrame:
    """The ordered candidate rows (rank, url, caption, source_file, source_row), cached in the
    set folder under a key of the files, their sizes, the seed and the count.

    One streaming pass reads the two columns of the files and keeps the drawn rows: at LAION
    scale a uniform sample touches every row group anyway."""
    files = parquet_files(spec)
    url_col, caption_col = _columns(spec)
    n = _positive(spec, "n_images", 10_000)
    k = _positive(spec, "max_candidates", 2 * n)
    key_parts: list[Any] = [[str(f.resolve()), f.stat().st_size] for f in files]
    key = hashlib.sha256(
        json.dumps([*key_parts, seed, k, url_col, caption_col]).encode()
    ).hexdigest()
    cache = out_dir / CANDIDATES
    if cache.is_file():
        cached = pl.read_parquet(cache)
        if cached.height and cached["sample_key"][0] == key:
            return cached.drop("sample_key")
    counts = np.array(row_counts(files), dtype=np.int64)
    total = int(counts.sum())
    drawn = np.random.default_rng(seed).choice(total, size=min(k, total), replace=False)
    order = pl.DataFrame({"row": drawn.astype(np.int64), "draw": np.arange(len(drawn))})
    picked = (
        pl.scan_parquet([str(f) for f in files])
        .select(url=pl.col(url_col).cast(pl.String), caption=pl.col(caption_col).cast(pl.String))
        .with_row_index("row")
        .filter(pl.col("row").is_in(order["row"].to_list()))
        .collect(engine="streaming")
        .with_columns(pl.col("row").cast(pl.Int64))
        .join(order, on="row")
        .sort("draw")
    )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    file_idx = np.searchsorted(starts, picked["row"].to_numpy(), side="right") - 1
    df = (
        picked.with_columns(
            source_file=pl.Series([files[i].name for i in file_idx], dtype=pl.String),
            source_row=picked["row"] - pl.Series(starts[file_idx]),
        )
        .filter(pl.col("url").is_not_null())
        .unique("url", keep="first", maintain_order=True)  # a repeated URL is taken once
        .with_row_index("rank")
        .select(pl.col("rank").cast(pl.Int64), "url", "caption", "source_file", "source_row")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    df.with_columns(sample_key=pl.lit(key)).write_parquet(cache)
    return df


def read_log(out_dir: Path) -> dict[str, dict[str, Any]]:
    """url → the last record logged for it (a half-written last line is ignored)."""
    log: dict[str, dict[str, Any]] = {}
    path = out_dir / LOG
    if not path.is_file():
        return log
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            log[rec["url"]] = rec
    return log


def _usable(rec: dict[str, Any] | None, out_dir: Path, retry_transient: bool) -> bool:
    """Whether a logged record stands (else the row is fetched again)."""
    if rec is None:
        return False
    if rec["status"] == "ok":
        return (out_dir / str(rec["path"])).is_file()
    transient = rec["status"] in TRANSIENT or str(rec["status"]).startswith("http_5")
    return not (retry_transient and transient)


def _pending(
    cands: pl.DataFrame,
    log: dict[str, dict[str, Any]],
    out_dir: Path,
    retry: bool,
    tried_now: set[str],
) -> Iterator[dict[str, Any]]:
    """Rows to fetch: never tried, lost from disk, or (``retry``) a transient failure of an
    earlier run. A row tried in this run is not tried again in it."""
    for cand in cands.iter_rows(named=True):
        if cand["url"] in tried_now:
            continue
        if not _usable(log.get(cand["url"]), out_dir, retry):
            yield cand


def _record(cand: dict[str, Any], fetched: Fetched) -> dict[str, Any]:
    return {
        "url": cand["url"],
        "status": fetched.status,
        "detail": fetched.detail,
        "image_id": fetched.image_id,
        "path": fetched.path,
        "sha256": fetched.sha256,
        "width": fetched.size[0],
        "height": fetched.size[1],
        "original_width": fetched.original_size[0],
        "original_height": fetched.original_size[1],
    }


def _ok_ids(cands: pl.DataFrame, log: dict[str, dict[str, Any]], out_dir: Path) -> set[str]:
    """Distinct ids of the good images so far (two URLs with the same bytes count once)."""
    return {
        log[url]["image_id"]
        for url in cands["url"]
        if _usable(log.get(url), out_dir, False) and log[url]["status"] == "ok"
    }


def _n_ok(cands: pl.DataFrame, log: dict[str, dict[str, Any]], out_dir: Path) -> int:
    return len(_ok_ids(cands, log, out_dir))


def fetch(
    spec: SourceSpec, out_dir: Path, seed: int, progress: ProgressFn | None = None
) -> pl.DataFrame:
    validate(spec)
    n = _positive(spec, "n_images", 10_000)
    retry = bool(spec.params.get("retry_transient", False))
    settings = DownloadSettings.from_params(spec.params)
    out_dir.mkdir(parents=True, exist_ok=True)
    cands = candidates(spec, out_dir, seed)
    log = read_log(out_dir)
    # Empty captions are settled without a download: no model can be prompted with them.
    cands_with_caption = cands.filter(
        pl.col("caption").map_elements(has_caption, return_dtype=pl.Boolean)
    )
    tried_now: set[str] = set()
    with open(out_dir / LOG, "a", encoding="utf-8") as log_fh:
        while (n_ok := _n_ok(cands_with_caption, log, out_dir)) < n:
            pending = _pending(cands_with_caption, log, out_dir, retry, tried_now)
            wave = list(islice(pending, n - n_ok))
            if not wave:
                break  # the candidates are spent: the set holds fewer than n_images
            tried_now.update(c["url"] for c in wave)
            ok_ids = _ok_ids(cands_with_caption, log, out_dir)
            for cand, fetched in fetch_all(wave, out_dir, settings):
                if fetched.status == "ok" and fetched.image_id not in ok_ids:
                    ok_ids.add(fetched.image_id)
                    n_ok += 1
                rec = _record(cand, fetched)
                log[cand["url"]] = rec
                log_fh.write(json.dumps(rec) + "\n")
                log_fh.flush()
                if progress:
                    progress(min(n, n_ok), n)
    df = _manifest(cands, log, n)
    write_manifest(out_dir, df)
    return df


def _manifest(cands: pl.DataFrame, log: dict[str, dict[str, Any]], n: int) -> pl.DataFrame:
    """Every candidate tried, in rank order, up to the n-th good image. Of two URLs with the same
    bytes the earlier in the order keeps the image; the later is a ``duplicate``."""
    rows: list[dict[str, Any]] = []
    first_url: dict[str, str] = {}
    n_ok = 0
    for cand in cands.iter_rows(named=True):
        if n_ok >= n:
            break
        provenance = {
            "url": cand["url"],
            "rank": cand["rank"],
            "source_file": cand["source_file"],
            "source_row": cand["source_row"],
        }
        if not has_caption(cand["caption"]):
            rows.append(
                manifest_row(
                    url_id(cand["url"]),
                    "",
                    cand["caption"],
                    "empty_caption",
                    "no caption in the parquet",
                    **provenance,
                )
            )
            continue
        rec = log.get(cand["url"])
        if rec is None:
            continue  # never tried: the set filled up before it
        status, detail = rec["status"], rec["detail"]
        if status == "ok" and first_url.setdefault(rec["image_id"], cand["url"]) != cand["url"]:
            status, detail = "duplicate", f"same bytes as {first_url[rec['image_id']]}"
        ok = status == "ok"
        n_ok += ok
        rows.append(
            manifest_row(
                rec["image_id"] if ok else url_id(cand["url"]),
                rec["path"] if ok else "",
                cand["caption"],
                status,
                detail,
                **provenance,
                sha256=rec["sha256"],
                width=rec["width"] if ok else None,
                height=rec["height"] if ok else None,
                original_width=rec["original_width"] or None,
                original_height=rec["original_height"] or None,
            )
        )
    return pl.DataFrame(rows, infer_schema_length=None)

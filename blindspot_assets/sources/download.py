"""Fetching image URLs: each URL becomes a checked, normalised file in the set folder, or a reason.

Two downloaders, the same checks after them (``sources/intake.check_image``), so the reasons are
the same whichever ran:

- ``httpx`` (default): a thread pool over one ``httpx.Client`` (connection pooling, redirects
  followed up to 5, a connect/read timeout plus a whole-download deadline of 3× it, bodies cut off
  past ``max_bytes``).
- ``img2dataset``: the LAION community's downloader, run as a command (``img2dataset`` on PATH, or
  the executable named by ``$BLINDSPOT_IMG2DATASET``) with re-encoding off; its per-URL error
  messages are mapped to our reasons. It installs cleanly beside our pins (no torchvision, no
  version changes), but brings ~26 packages we do not otherwise need (wandb, opencv, albumentations,
  pandas, scipy, opentelemetry...) and resumes per shard rather than per URL, which is why it is
  not the default and can live in its own environment (``pipx install img2dataset``).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from blindspot_assets.config import ConfigError
from blindspot_assets.sources.intake import (
    ID_HEX,
    ImageChecks,
    check_image,
    normalise,
    reason_from_message,
    save_atomic,
    stored_path,
)

DEFAULT_USER_AGENT = "blindspot-assets/0.1 (research; +https://github.com/rom1504/img2dataset)"
DOWNLOADERS = ("httpx", "img2dataset")
IMG2DATASET_ENV = "BLINDSPOT_IMG2DATASET"


@dataclass(frozen=True)
class DownloadSettings:
    checks: ImageChecks = ImageChecks()
    timeout_s: float = 10.0
    workers: int = 16
    user_agent: str = DEFAULT_USER_AGENT
    downloader: str = "httpx"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DownloadSettings:
        timeout = params.get("timeout_s", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"real.timeout_s: {timeout!r} is not a positive number of seconds")
        workers = params.get("workers", 16)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"real.workers: {workers!r} is not a positive integer")
        return cls(
            checks=ImageChecks.from_params(params, "real"),
            timeout_s=float(timeout),
            workers=workers,
            user_agent=str(params.get("user_agent", DEFAULT_USER_AGENT)),
            downloader=str(params.get("downloader", "httpx")),
        )


@dataclass(frozen=True)
class Fetched:
    status: str
    detail: str = ""
    image_id: str = ""
    path: str = ""
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)


def store(data: bytes, out_dir: Path, checks: ImageChecks) -> Fetched:
    """Check downloaded bytes; store the normalised image under its content id."""
    digest = hashlib.sha256(data).hexdigest()
    checked = check_image(data, checks)
    if checked.status != "ok" or checked.image is None:
        return Fetched(
            checked.status, checked.detail, sha256=digest, original_size=checked.original_size
        )
    image_id = digest[:ID_HEX]
    rel = stored_path(image_id)
    image = normalise(checked.image, checks.max_short_side)
    if not (out_dir / rel).is_file():
        save_atomic(image, out_dir / rel)
    return Fetched("ok", "", image_id, rel, digest, image.size, checked.original_size)


def _get(
    client: httpx.Client, url: str, settings: DownloadSettings
) -> tuple[bytes | None, Fetched]:
    deadline = time.monotonic() + 3 * settings.timeout_s
    limit = settings.checks.max_bytes
    try:
        with client.stream("GET", url) as resp:
            if resp.status_code >= 400:
                return None, Fetched(f"http_{resp.status_code}", resp.reason_phrase)
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                return None, Fetched("too_large", f"{length} bytes > max_bytes {limit}")
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return None, Fetched("too_large", f"over max_bytes {limit}")
                if time.monotonic() > deadline:
                    return None, Fetched("timeout", f"body not done in {3 * settings.timeout_s}s")
                chunks.append(chunk)
            return b"".join(chunks), Fetched("ok", resp.headers.get("content-type", ""))
    except httpx.TimeoutException as exc:
        return None, Fetched("timeout", type(exc).__name__)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return None, Fetched("bad_url", str(exc)[:200])
    except httpx.TooManyRedirects as exc:
        return None, Fetched("download_error", f"TooManyRedirects: {str(exc)[:200]}")
    except httpx.TransportError as exc:
        return None, Fetched("connection_error", f"{type(exc).__name__}: {str(exc)[:200]}")
    except httpx.HTTPError as exc:
        return None, Fetched("download_error", f"{type(exc).__name__}: {str(exc)[:200]}")


def _download_one(
    client: httpx.Client, url: str, out_dir: Path, settings: DownloadSettings
) -> Fetched:
    data, fetched = _get(client, url, settings)
    if data is None:
        return fetched
    try:
        return store(data, out_dir, settings.checks)
    except OSError as exc:  # the disk, not the image: say so rather than blame the URL
        return Fetched("download_error", f"storing failed: {exc}")


def _fetch_httpx(
    wave: list[dict[str, Any]], out_dir: Path, settings: DownloadSettings
) -> Iterator[tuple[dict[str, Any], Fetched]]:
    timeout = httpx.Timeout(settings.timeout_s)
    limits = httpx.Limits(max_connections=2 * settings.workers)
    with (
        httpx.Client(
            timeout=timeout,
            limits=limits,
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": settings.user_agent},
        ) as client,
        ThreadPoolExecutor(max_workers=settings.workers) as pool,
    ):
        futures = {pool.submit(_download_one, client, c["url"], out_dir, settings): c for c in wave}
        for future in as_completed(futures):
            yield futures[future], future.result()


def img2dataset_command() -> list[str] | None:
    """How to run img2dataset here: $BLINDSPOT_IMG2DATASET, the CLI on PATH, or the module."""
    explicit = os.environ.get(IMG2DATASET_ENV)
    if explicit:
        return [explicit]
    found = shutil.which("img2dataset")
    if found:
        return [found]
    try:
        import importlib.util

        if importlib.util.find_spec("img2dataset") is not None:
            return [sys.executable, "-m", "img2dataset"]
    except (ImportError, ValueError):
        pass
    return None


def _img2dataset_args(urls: Path, out: Path, n: int, settings: DownloadSettings) -> list[str]:
    """img2dataset's flags: files layout, the raw bytes kept (no resize, no re-encoding), the
    candidate rank carried along as ``cand``, no retries (the waves retry)."""
    flags = {
        "url_list": str(urls), "input_format": "parquet", "url_col": "url",
        "caption_col": "caption", "save_additional_columns": "['cand']",
        "output_format": "files", "output_folder": str(out), "processes_count": "1",
        "thread_count": str(settings.workers),
        "timeout": str(max(1, math.ceil(settings.timeout_s))), "retries": "0",
        "resize_mode": "no", "disable_all_reencoding": "True", "enable_wandb": "False",
        "user_agent_token": "blindspot-assets", "number_sample_per_shard": str(max(1, n)),
        "distributor": "multiprocessing",
    }  # fmt: skip
    return [arg for name, value in flags.items() for arg in (f"--{name}", value)]


def _fetch_img2dataset(
    wave: list[dict[str, Any]], out_dir: Path, settings: DownloadSettings
) -> Iterator[tuple[dict[str, Any], Fetched]]:
    """One img2dataset run over the wave (files layout, raw bytes kept), then our checks."""
    command = img2dataset_command()
    if command is None:
        raise ConfigError(
            f"real.downloader: img2dataset is not installed; fix: pip install "
            f"img2dataset (or pipx, and set ${IMG2DATASET_ENV}), or use httpx"
        )
    with tempfile.TemporaryDirectory(prefix="i2d-", dir=out_dir) as tmp:
        work = Path(tmp)
        pl.DataFrame(
            {
                "url": [c["url"] for c in wave],
                "caption": [c["caption"] for c in wave],
                "cand": [str(c["rank"]) for c in wave],
            }
        ).write_parquet(work / "urls.parquet")
        args = _img2dataset_args(work / "urls.parquet", work / "out", len(wave), settings)
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60 + 10 * settings.timeout_s * len(wave),
            check=False,
        )
        tables = sorted((work / "out").glob("*.parquet"))
        if not tables:
            raise RuntimeError(f"img2dataset wrote no shard table: {done.stderr[-2000:]}")
        yield from _img2dataset_results(wave, tables, out_dir, settings)


def _img2dataset_results(
    wave: list[dict[str, Any]], tables: list[Path], out_dir: Path, settings: DownloadSettings
) -> Iterator[tuple[dict[str, Any], Fetched]]:
    """Each candidate img2dataset reported on, with its stored image or its failure reason."""
    by_rank = {str(c["rank"]): c for c in wave}
    for table in tables:
        for rec in pl.read_parquet(table).iter_rows(named=True):
            cand = by_rank.get(str(rec.get("cand")))
            if cand is None:
                continue
            if rec.get("status") != "success":
                message = rec.get("error_message") or ""
                yield cand, Fetched(reason_from_message(message), message[:300])
                continue
            files = list((table.parent / table.stem).glob(f"{rec['key']}.*"))
            image = next((f for f in files if f.suffix not in (".txt", ".json")), None)
            if image is None:
                yield cand, Fetched("download_error", "img2dataset reported success, no file")
                continue
            yield cand, store(image.read_bytes(), out_dir, settings.checks)


def fetch_all(
    wave: list[dict[str, Any]], out_dir: Path, settings: DownloadSettings
) -> Iterator[tuple[dict[str, Any], Fetched]]:
    """(candidate, result) for every candidate of the wave, as each finishes."""
    web = [c for c in wave if str(c["url"]).startswith(("http://", "https://"))]
    for cand in wave:
        if not str(cand["url"]).startswith(("http://", "https://")):
            yield cand, Fetched("bad_url", f"not an http(s) URL: {str(cand['url'])[:100]}")
    if not web:
        return
    if settings.downloader == "img2dataset":
        yield from _fetch_img2dataset(web, out_dir, settings)
    else:
        yield from _fetch_httpx(web, out_dir, settings)

"""What every real-image source shares: stable ids, the checks an image must pass, the failure
reasons, the resize policy, and manifest rows.

Failure reasons (the ``status`` of a manifest row that is not ``ok``):

    http_<code>       the server answered with that status (http_404, http_500, ...)
    timeout           no answer, or the body stalled, past the timeout
    connection_error  refused, reset, DNS failure, TLS failure
    bad_url           not an http(s) URL
    not_an_image      the bytes are no image format (an HTML page, say)
    decode_error      an image format whose data does not decode (a truncated JPEG, say)
    too_small         shorter side below ``min_side``
    too_large         more than ``max_pixels`` pixels or ``max_bytes`` bytes
    empty_caption     no caption to prompt a model with
    duplicate         the same bytes as an earlier image of the set
    missing_file      a listed file is not on disk
    download_error    any other failure of the downloader (its message is in ``detail``)
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image, UnidentifiedImageError

from blindspot_assets.checkpoint_versions import MissingInput
from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.encoders.images import downscale, to_rgb
from blindspot_assets.store.atomic import write_atomic
from blindspot_assets.store.images import save_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ID_HEX = 16  # 64 bits of sha256: collisions stay unlikely far beyond LAION-size samples


def content_id(data: bytes) -> str:
    """The stable id of an image: the first 16 hex digits of the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX]


def path_id(path: str) -> str:
    """The id of a file that cannot carry its content id (a duplicate, a missing file)."""
    return "file-" + hashlib.sha256(path.encode()).hexdigest()[:ID_HEX]


def url_id(url: str) -> str:
    """The id of a row whose image could not be had: derived from its URL."""
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:ID_HEX]


def has_caption(caption: Any) -> bool:
    return isinstance(caption, str) and bool(caption.strip())


@dataclass(frozen=True)
class ImageChecks:
    """What an image must satisfy; ``max_short_side`` is the resize policy (None: keep size)."""

    min_side: int = 64
    max_pixels: int = 50_000_000
    max_bytes: int = 30_000_000
    max_short_side: int | None = 512

    @classmethod
    def from_params(cls, params: dict[str, Any], where: str) -> ImageChecks:
        values: dict[str, int | None] = {}
        for name in CHECK_PARAMS:
            if name not in params:
                continue
            value = params[name]
            if name == "max_short_side" and value is None:
                values[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where}.{name}: {value!r} is not a non-negative integer")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]


CHECK_PARAMS = tuple(f.name for f in fields(ImageChecks))
"""The image checks' fields: parameters of every source that stores images."""
LOCAL_PARAMS = {"path", "copy", "workers", *CHECK_PARAMS}
"""The parameters every source of images on disk (folder, img2dataset) takes."""


@dataclass(frozen=True)
class Checked:
    """An image that passed, or the reason it did not."""

    status: str
    detail: str = ""
    image: Image.Image | None = None
    original_size: tuple[int, int] = (0, 0)


def check_image(data: bytes, checks: ImageChecks) -> Checked:
    """Decode fully (a truncated file fails here, not later), then apply size limits."""
    if len(data) > checks.max_bytes:
        return Checked("too_large", f"{len(data)} bytes > max_bytes {checks.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return Checked("too_large", str(exc))
    except UnidentifiedImageError:
        return Checked("not_an_image", f"no image format recognised in {len(data)} bytes")
    except Exception as exc:  # noqa: BLE001 - any header failure is a decode failure
        return Checked("decode_error", f"{type(exc).__name__}: {exc}")
    width, height = image.size
    if width * height > checks.max_pixels:
        return Checked(
            "too_large",
            f"{width}x{height} > max_pixels {checks.max_pixels}",
            original_size=(width, height),
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, unsupported mode...
        return Checked(
            "decode_error", f"{type(exc).__name__}: {exc}", original_size=(width, height)
        )
    if min(width, height) < checks.min_side:
        return Checked(
            "too_small",
            f"{width}x{height}: shorter side < min_side {checks.min_side}",
            original_size=(width, height),
        )
    return Checked("ok", image=image, original_size=(width, height))


def normalise(image: Image.Image, max_short_side: int | None) -> Image.Image:
    """The storage policy: EXIF orientation applied; RGB (transparency over white); downscaled
    (Lanczos) so the shorter side is at most ``max_short_side``; never upscaled, never cropped.
    The same steps as the encoder's image pipeline (``encoders/images.py``), which runs again on
    both sides before the encoder."""
    return downscale(to_rgb(image), max_short_side, "lanczos")


def save_atomic(image: Image.Image, path: Path) -> None:
    """Lossless PNG under a temporary name, then renamed: an interrupted write leaves no half
    file under the final name. Lossless, so a stored real image carries the artefacts of its own
    source and no second codec of ours: the encoder's image pipeline adds the one codec both
    sides share."""
    write_atomic(path, lambda tmp: save_png(image, tmp))


def stored_path(image_id: str) -> str:
    """Where a downloaded image lives in the set folder (two-hex-digit subfolders)."""
    return f"{image_id[:2]}/{image_id}.png"


def manifest_row(
    image_id: str, path: str, caption: Any, status: str, detail: str = "", **extra: Any
) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "path": path,
        "caption": caption if isinstance(caption, str) else "",
        "status": status,
        "detail": detail,
        **extra,
    }


_HTTP_RE = re.compile(r"(?:HTTP Error |status code |http_)(\d{3})", re.IGNORECASE)
_MESSAGE_REASONS = (
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("too small", "too_small"),
    ("too large", "too_large"),
    ("image decoding error", "decode_error"),
    ("truncated", "decode_error"),
    ("cannot identify image", "not_an_image"),
    ("unknown url type", "bad_url"),
    ("connection refused", "connection_error"),
    ("name or service not known", "connection_error"),
    ("connection reset", "connection_error"),
    ("urlopen error", "connection_error"),
    ("ssl", "connection_error"),
)


def reason_from_message(message: str | None) -> str:
    """Map a downloader's error text (img2dataset's ``error_message``) to a failure reason."""
    if not message:
        return "download_error"
    match = _HTTP_RE.search(message)
    if match:
        return f"http_{match.group(1)}"
    lowered = message.lower()
    for needle, reason in _MESSAGE_REASONS:
        if needle in lowered:
            return reason
    return "download_error"


def unknown_params(spec: SourceSpec, known: set[str]) -> None:
    unknown = sorted(set(spec.params) - known)
    if unknown:
        raise ConfigError(
            f"real.{unknown[0]}: not a field of the {spec.kind!r} source; fix: remove it, or use "
            f"one of {sorted(known)}"
        )


def file_under(raw: object, folder: Path) -> Path | None:
    """A file parameter (a source's or a pregenerated model's ``manifest``): None when not
    given, else its path with ``~`` expanded, relative to ``folder`` unless absolute."""
    if raw is None:
        return None
    path = Path(str(raw)).expanduser()
    return path if path.is_absolute() else folder / path


def existing_dir(spec: SourceSpec, name: str) -> Path:
    raw = spec.params.get(name)
    if not isinstance(raw, str) or not raw:
        raise ConfigError(
            f"real.{name} is required for the {spec.kind!r} source; fix: set it to a folder"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise MissingInput(
            f"real.{name}: folder {path} does not exist; fix: point it at the "
            "folder that holds the images"
        )
    return path


@dataclass(frozen=True)
class LocalImage:
    """A file to take into the set: its id (None: its content id), caption and extra columns."""

    path: Path
    caption: Any
    image_id: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()


def _ingest_one(item: LocalImage, out_dir: Path, checks: ImageChecks, copy: bool) -> dict[str, Any]:
    extra = dict(item.extra)
    shown = item.path.as_posix()
    if not item.path.is_file():
        return manifest_row(
            item.image_id or path_id(shown),
            "",
            item.caption,
            "missing_file",
            f"{shown} is not on disk",
            **extra,
            source_path=shown,
            sha256="",
        )
    data = item.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    image_id = item.image_id or digest[:ID_HEX]
    checked = check_image(data, checks)
    extra.update(
        source_path=shown,
        sha256=digest,
        original_width=checked.original_size[0],
        original_height=checked.original_size[1],
    )
    if checked.status != "ok" or checked.image is None:
        return manifest_row(image_id, "", item.caption, checked.status, checked.detail, **extra)
    if copy:
        rel = stored_path(image_id)
        if not (out_dir / rel).exists():
            save_atomic(normalise(checked.image, checks.max_short_side), out_dir / rel)
        path = rel
    else:
        resolved = item.path.resolve()
        root = out_dir.resolve()
        path = (
            resolved.relative_to(root).as_posix()
            if resolved.is_relative_to(root)
            else str(resolved)
        )
    status, detail = ("ok", "") if has_caption(item.caption) else ("empty_caption", "no caption")
    return manifest_row(image_id, path, item.caption, status, detail, **extra)


def ingest_local(
    items: list[LocalImage],
    out_dir: Path,
    checks: ImageChecks,
    copy: bool,
    workers: int = 8,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Check every file (decoding it fully), in parallel; one manifest row per file, in order.
    A second file with the same id (the same bytes, for content ids) becomes a ``duplicate``."""
    from concurrent.futures import ThreadPoolExecutor

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, row in enumerate(pool.map(lambda it: _ingest_one(it, out_dir, checks, copy), items)):
            rows.append(row)
            if progress:
                progress(i + 1, len(items))
    seen: dict[str, str] = {}
    for row in rows:
        first = seen.setdefault(row["image_id"], row["source_path"])
        if first != row["source_path"]:
            row.update(
                image_id=path_id(row["source_path"]),
                path="",
                status="duplicate",
                detail=f"same id as {first}",
            )
    return rows


def manifest_counts(manifest: pl.DataFrame) -> dict[str, Any]:
    """An image set's counts: images, usable, failed, usable with an empty caption, and the
    failures per reason."""
    failures = manifest.filter(pl.col("status") != "ok")
    empty = manifest.filter(
        (pl.col("status") == "ok") & (pl.col("caption").str.strip_chars() == "")
    )
    return {
        "n_images": manifest.height,
        "n_ok": manifest.height - failures.height,
        "n_failed": failures.height,
        "n_empty_captions": empty.height,
        "failures_by_reason": dict(failures.group_by("status").len().iter_rows()),
    }

"""All-or-nothing file writes: the temporary file + ``os.replace`` pattern, written once.

A reader (or a run killed mid-write, or two processes writing the same file) sees the old file
or the new one, never half of one. Whole folders swapped in place (a row store's staging
folder, the report's images) keep their own two-rename dance in ``rowstore`` and the report.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """A sibling of ``path`` no other writer uses: hidden (a dot name, which listings of image
    folders skip), unique per process and thread, ending in ``.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary sibling of ``path``, then one rename puts it in place.
    On any failure the temporary file is removed and an older ``path`` is left as it was.
    A writer that picks the format from the file's suffix must be told the format (the
    temporary name ends in ``.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, all or nothing."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> Path:
    """``text`` (UTF-8) at ``path``, all or nothing."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """``obj`` as indented JSON with sorted keys (``str`` for anything else), all or nothing."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str))

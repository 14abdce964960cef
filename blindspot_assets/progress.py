"""Progress of long library steps outside Dagster: a bar in a terminal, a line every few seconds
elsewhere. Library functions take a ``progress(done, total)`` callback; this makes one.

    with progress_bar("features real") as progress:
        extract_features(..., progress=progress)
"""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import Any, TextIO


def progress_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    """``label: done/total (rate/s, ETA s)`` — the one format of a progress report."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else math.nan
    eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
    return f"{label}: {done}/{total} ({rate:.1f}/s, ETA {eta_text})"


class ProgressBar:
    """A ``progress(done, total)`` callback: a tqdm bar on a terminal (when tqdm is installed),
    otherwise a :func:`progress_line` every ``every_s`` seconds and at the end."""

    def __init__(
        self,
        label: str,
        every_s: float = 5.0,
        stream: TextIO | None = None,
        bar: bool | None = None,
    ) -> None:
        self.label = label
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self._t0 = time.perf_counter()
        self._last = -math.inf
        self._bar: Any = None
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self._want_bar = bar

    def __call__(self, done: int, total: int) -> None:
        if self._want_bar and self._bar is None:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]
            except ImportError:
                self._want_bar = False
            else:
                self._bar = tqdm(total=total, desc=self.label, file=self.stream, leave=True)
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)
            return
        now = time.perf_counter()
        if now - self._last < self.every_s and done < total:
            return
        self._last = now
        print(progress_line(self.label, done, total, now - self._t0), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress_bar(label: str, every_s: float = 5.0, stream: TextIO | None = None) -> ProgressBar:
    """A progress callback for a terminal; use it as a context manager to close the bar."""
    return ProgressBar(label, every_s, stream)

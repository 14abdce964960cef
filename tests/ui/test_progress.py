"""Terminal progress for library callbacks: a line every few seconds, or a tqdm bar."""

from __future__ import annotations

import io

from blindspot_assets.progress import ProgressBar, progress_bar, progress_line


def test_progress_line_format():
    assert progress_line("codes real", 50, 200, 10.0) == "codes real: 50/200 (5.0/s, ETA 30s)"
    assert progress_line("x", 0, 10, 0.0).endswith("(0.0/s, ETA ?)")


def test_lines_are_throttled_and_the_last_one_always_printed():
    out = io.StringIO()
    with progress_bar("features real", every_s=3600, stream=out) as progress:
        for done in range(1, 101):
            progress(done, 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first call, then the final one
    assert lines[-1].startswith("features real: 100/100")


def test_bar_when_asked():
    out = io.StringIO()
    with ProgressBar("generate demo-a", stream=out, bar=True) as progress:
        for done in (10, 20, 40):
            progress(done, 40)
    text = out.getvalue()
    assert "generate demo-a" in text and "40/40" in text

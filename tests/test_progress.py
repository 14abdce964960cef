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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_when_asked_or_on_a_terminal_lines_otherwise():
    import tqdm  # noqa: F401 - the bar is tqdm's (huggingface_hub installs it): must be here

    for stream, bar in ((io.StringIO(), True), (_Terminal(), None)):
        with ProgressBar("generate demo-a", stream=stream, bar=bar) as progress:
            for done in (10, 20, 40):
                progress(done, 40)
        text = stream.getvalue()
        # tqdm redraws in place; its final state is the full bar
        assert text.startswith("\rgenerate demo-a:") and "100%|##########| 40/40" in text
        assert "ETA" not in text  # not the line format
    for stream, bar in ((_Terminal(), False), (io.StringIO(), None)):
        with ProgressBar("generate demo-a", every_s=0, stream=stream, bar=bar) as progress:
            for done in (10, 20, 40):
                progress(done, 40)
        lines = stream.getvalue().splitlines()
        assert [line.split(" (")[0] for line in lines] == [
            "generate demo-a: 10/40",
            "generate demo-a: 20/40",
            "generate demo-a: 40/40",
        ]
        assert "\r" not in stream.getvalue() and "%|" not in stream.getvalue()

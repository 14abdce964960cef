"""The report in a real headless browser: it loads without console errors, every image decodes,
the table script works, and screenshots are taken (kept in $BLINDSPOT_SCREENSHOTS if set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from blindspot_assets.report import build_report
from tests.report.synthetic_run import SUPPRESSED, build_run
from tests.ui.browser import Browser


def _keep(shots: list[Path]) -> None:
    keep = os.environ.get("BLINDSPOT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(keep) / shot.name)


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path, chromium):
    cfg = build_run(tmp_path, tables="library")
    summary = build_report(cfg, tmp_path / "report")
    shots = []
    with Browser(chromium, width=1400, height=1000) as browser:
        browser.open(summary.path.resolve().as_uri())
        broken = browser.load_all_images()
        n_sources = browser.evaluate(
            "new Set(Array.from(document.images).map(i => i.getAttribute('src'))).size"
        )
        n_svgs = browser.evaluate("document.querySelectorAll('svg').length")
        # The flagged-concepts table sorts on a header click and filters on typing.
        order = browser.evaluate(
            """(() => {
              const t = document.querySelector('table.sortable');
              const col = Array.from(t.tHead.rows[0].cells).findIndex(
                  th => th.textContent.trim() === 'delta');
              t.tHead.rows[0].cells[col].click();
              const first = t.tBodies[0].rows[0].cells[col].getAttribute('data-v');
              const input = document.querySelector('input.filter');
              input.value = 'suppressed'; input.dispatchEvent(new Event('input'));
              const shown = Array.from(t.tBodies[0].rows).filter(r => r.style.display !== 'none');
              return [+first, shown.length, t.tBodies[0].rows.length];
            })()"""
        )
        shots.append(browser.screenshot(tmp_path / "report-top.png"))
        browser.evaluate(f"document.getElementById('m-demo-a-c{SUPPRESSED}').scrollIntoView()")
        shots.append(browser.screenshot(tmp_path / "report-suppressed-card.png"))
        problems = browser.report().problems
    _keep(shots)
    assert problems == []
    assert broken == []
    assert n_sources == len(list((tmp_path / "report" / "img").rglob("*.jpg"))) > 0
    assert n_svgs >= 2 * 3 + 2  # three figures per model, two across models
    smallest_delta, shown, total = order
    assert smallest_delta < 0.1 and 0 < shown < total
    for shot in shots:
        with Image.open(shot) as im:
            assert im.size == (1400, 1000)
            # A rendered page, not a blank one: many distinct colours.
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 500

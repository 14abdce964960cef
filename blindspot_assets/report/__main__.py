"""Rebuild the HTML report of a run from the terminal.

``python -m blindspot_assets.report [config.yaml] [--out DIR]`` (default: the run's report folder)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blindspot_assets.config import load_config
from blindspot_assets.progress import progress_bar
from blindspot_assets.report.html import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blindspot_assets.report")
    parser.add_argument("config", nargs="?", help="run config YAML (default: $BLINDSPOT_CONFIG)")
    parser.add_argument("--out", help="output folder (default: <data_root>/report)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    out = cfg.layout.report if args.out is None else Path(args.out)
    with progress_bar("report heat maps") as progress:
        summary = build_report(cfg, out, progress=progress)
    print(
        f"{summary.path} — {summary.n_models} models, {summary.n_blindspots} flagged concepts, "
        f"{summary.n_concept_cards} concept cards, {summary.n_images} images, "
        f"{summary.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

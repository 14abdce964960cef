"""The paper's headline numbers beside ours: ``python -m blindspot_assets.paper_tables DB``.

Reads the DuckDB file of a run (views ``model_summaries`` and ``model_correlations``, written by
the ``model_comparison`` asset) and prints, in the paper's layout, the δ skewness per model and
the Pearson r of relative differences between SD 1.5 and each other model, each beside the
value the paper published. Models are matched to the paper's by their keys (``sd15``, ``sd21``,
``pixart-alpha``, ``kandinsky21`` in configs/paper.yaml); ``--model PAPER=KEY`` overrides.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import duckdb

# Published values (Bohacek, Fel, Agrawala, Lubana 2025).
PAPER_SKEWNESS = {"SD 2.1": -0.54, "SD 1.5": -0.40, "PixArt-α": -0.40, "Kandinsky 2.1": -0.23}
PAPER_PEARSON = {"SD 2.1": 0.82, "PixArt-α": 0.41, "Kandinsky 2.1": 0.46}  # vs SD 1.5
DEFAULT_KEYS = {
    "SD 1.5": "sd15",
    "SD 2.1": "sd21",
    "PixArt-α": "pixart-alpha",
    "Kandinsky 2.1": "kandinsky21",
}


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.2f}"


def read_numbers(
    db: str | Path,
) -> tuple[dict[str, float], dict[frozenset[str], float]]:
    """(δ skewness by model key, Pearson r by unordered model-key pair) from a run's DuckDB."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        skew = dict(con.sql("SELECT model, delta_skewness FROM model_summaries").fetchall())
        try:
            pairs = con.sql("SELECT model_a, model_b, pearson_r FROM model_correlations").fetchall()
        except duckdb.Error:  # a run with one model has no correlations
            pairs = []
    finally:
        con.close()
    return (
        {str(k): float(v) for k, v in skew.items() if v is not None},
        {frozenset((str(a), str(b))): float(r) for a, b, r in pairs if r is not None},
    )


def render(skew: dict[str, float], corr: dict[frozenset[str], float], keys: dict[str, str]) -> str:
    lines = ["δ skewness per model", f"{'model':<15}{'key':<15}{'ours':>8}{'paper':>8}"]
    for name, published in PAPER_SKEWNESS.items():
        key = keys.get(name, "")
        lines.append(f"{name:<15}{key:<15}{_fmt(skew.get(key)):>8}{_fmt(published):>8}")
    lines += ["", "Pearson r of relative differences, SD 1.5 vs",
              f"{'model':<15}{'key':<15}{'ours':>8}{'paper':>8}"]  # fmt: skip
    base = keys.get("SD 1.5", "")
    for name, published in PAPER_PEARSON.items():
        key = keys.get(name, "")
        ours = corr.get(frozenset((base, key)))
        lines.append(f"{name:<15}{key:<15}{_fmt(ours):>8}{_fmt(published):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db", type=Path, help="the run's blindspots.duckdb")
    names = ", ".join(DEFAULT_KEYS)
    parser.add_argument("--model", action="append", default=[], metavar="PAPER=KEY",
                        help=f"map a paper model ({names}) to a model key")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.db.exists():
        print(f"no DuckDB file at {args.db}", file=sys.stderr)
        return 2
    keys = dict(DEFAULT_KEYS)
    for item in args.model:
        name, _, key = item.partition("=")
        if name not in DEFAULT_KEYS or not key:
            parser.error(f"--model {item!r}: use PAPER=KEY with PAPER one of {list(DEFAULT_KEYS)}")
        keys[name] = key
    skew, corr = read_numbers(args.db)
    print(render(skew, corr, keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

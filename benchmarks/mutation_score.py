"""The score of the last ``./run mutants`` per module, from mutmut's records in ``mutants/``.

    python benchmarks/mutation_score.py                     # killed, survived, ... per module
    python benchmarks/mutation_score.py --sample N          # the same over the sample of N
    python benchmarks/mutation_score.py --sample N --names  # the sample: names, one a line

Score = killed / (killed + survived) over the mutants that were run (timeouts count as killed,
mutants no selected test reaches are listed apart: the fast tests do not cover them). The
sample is fixed: the N names of each module with the smallest SHA-256, so reruns pick the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not run"}
TIMEOUTS = {24, -24, 36, 152, 255}


def records() -> dict[str, dict[str, int | None]]:
    """Module path → mutant name → exit code, for every module mutmut mutated."""
    out = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = str(meta.relative_to(MUTANTS)).removesuffix(".meta")
        out[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def _all_names() -> list[str]:
    return [name for codes in records().values() for name in codes]


def status(code: int | None) -> str:
    return "killed" if code in TIMEOUTS else STATUS.get(code, "other")


def table(sample_n: int | None = None) -> str:
    lines = [f"{'module':<40} {'killed':>7} {'survived':>8} {'no tests':>8} {'not run':>7} score"]
    total: Counter[str] = Counter()
    for module, codes in records().items():
        names = _sampled(codes, sample_n) if sample_n else list(codes)
        count = Counter(status(codes[name]) for name in names)
        total += count
        lines.append(_row(module, count))
    lines.append(_row("all", total))
    return "\n".join(lines)


def _row(name: str, count: Counter[str]) -> str:
    run = count["killed"] + count["survived"]
    score = f"{100 * count['killed'] / run:.1f} %" if run else "-"
    return (
        f"{name:<40} {count['killed']:>7} {count['survived']:>8} {count['no tests']:>8} "
        f"{count['not run']:>7} {score}"
    )


def _sampled(codes: dict[str, int | None], n: int) -> list[str]:
    return sorted(codes, key=lambda k: hashlib.sha256(k.encode()).hexdigest())[:n]


def sample(n: int) -> list[str]:
    return [name for codes in records().values() for name in _sampled(codes, n)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, help="only the N mutants of each module sampled")
    parser.add_argument("--names", action="store_true", help="print the names, not the table")
    args = parser.parse_args()
    if args.names:
        print("\n".join(sample(args.sample) if args.sample else _all_names()))
    else:
        print(table(args.sample))

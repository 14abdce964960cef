"""Nearest-neighbour search of the memorisation check at scale: ConeIndex vs brute force.

    .venv/bin/python benchmarks/bench_memorization.py --sizes 10000 100000 1000000

Synthetic unit descriptors shaped like the check's (one per real image, one per generated
image): a mixture of ``--groups`` content clusters with spread, the generated side drawn from
the same mixture (``--groups``: fixed, or 0 for √N / 2 clusters, as many as the index has lists
over two), 1 % planted near copies of real images. Each size runs in its own process
(peak RSS per size). Reported: index build and search seconds, seconds per 1k queries, the
fraction of (query, list) pairs scanned, brute-force seconds (measured up to
``--brute-max``, extrapolated as N² beyond), and agreement with brute force on a sample.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blindspot_assets.stats.memorization import ConeIndex  # noqa: E402


def descriptors(n: int, dim: int, groups: int, seed: int, centres: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        pick = torch.randint(groups, (b - a,), generator=g)
        out[a:b] = centres[pick] + 0.35 * torch.randn(b - a, dim, generator=g)
    return torch.nn.functional.normalize(out, dim=1)


def brute(
    queries: torch.Tensor, refs: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    best, arg = [], []
    for a in range(0, queries.shape[0], block):
        v, i = (queries[a : a + block] @ refs.T).max(dim=1)
        best.append(v)
        arg.append(i)
    return torch.cat(best), torch.cat(arg)


def one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    groups = args.groups or max(1, round(math.sqrt(n) / 2))
    centres = torch.randn(groups, args.dim, generator=g)
    refs = descriptors(n, args.dim, groups, 1, centres)
    queries = descriptors(n, args.dim, groups, 2, centres)
    n_copy = n // 100
    queries[:n_copy] = torch.nn.functional.normalize(
        refs[:n_copy] + 0.02 * torch.randn(n_copy, args.dim, generator=g), dim=1
    )
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = ConeIndex(refs, ids)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    best, arg = [], []
    for a in range(0, n, args.query_block):
        v, i = index.search(queries[a : a + args.query_block])
        best.append(v)
        arg.append(i)
    search = time.perf_counter() - t0
    arg_all = torch.cat(arg)
    sample = torch.randperm(n, generator=g)[: min(n, 2000)]
    ref_v, ref_i = brute(queries[sample], refs, args.query_block)
    out: dict[str, Any] = {
        "n": n,
        "dim": args.dim,
        "groups": groups,
        "lists": len(index.centres),
        "build_s": build,
        "search_s": search,
        "s_per_1k_queries": (build + search) / n * 1000,
        "scanned_fraction": index.lists_scanned / (n * len(index.centres)),
        "agree_with_brute_on_sample": float((arg_all[sample] == ref_i).float().mean()),
        "planted_found": float((arg_all[:n_copy] == torch.arange(n_copy)).float().mean()),
    }
    if n <= args.brute_max:
        t0 = time.perf_counter()
        brute(queries, refs, args.query_block)
        out["brute_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--groups", type=int, default=0, help="content clusters; 0: √N / 2")
    ap.add_argument("--query-block", type=int, default=2048)
    ap.add_argument("--brute-max", type=int, default=100_000)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--dim", str(args.dim)]
        cmd += ["--groups", str(args.groups), "--query-block", str(args.query_block)]
        cmd += ["--brute-max", str(args.brute_max)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"\n{'N':>9}{'lists':>7}{'build s':>9}{'search s':>10}{'s/1k q':>8}{'scanned':>9}"
          f"{'brute s':>10}{'agree':>7}{'RSS MB':>8}")  # fmt: skip
    for r in rows:
        brute_s = r.get("brute_s", base.get("brute_s", float("nan")) * (r["n"] / base["n"]) ** 2)
        mark = "" if "brute_s" in r else "*"
        print(
            f"{r['n']:>9}{r['lists']:>7}{r['build_s']:>9.1f}{r['search_s']:>10.1f}"
            f"{r['s_per_1k_queries']:>8.3f}{r['scanned_fraction']:>9.2%}{brute_s:>9.0f}{mark:1}"
            f"{r['agree_with_brute_on_sample']:>7.3f}{r['peak_rss_mb']:>8.0f}"
        )
    print("* extrapolated as N² from the smallest size")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Nearest-neighbour search of the memorisation check at scale: faiss against the old cone tree.

    .venv/bin/python benchmarks/bench_memorization.py --sizes 10000 100000 1000000 --before 286a7fe

``after`` is ``NearestIndex`` (faiss: flat up to ``FLAT_MAX`` vectors, the cone-certified IVF
above); ``before`` is the hand-written ``ConeIndex`` it replaced, taken from git at
``--before`` (the module as it was at that commit, written to a temporary file and imported),
so both columns come from one run on one machine.

Synthetic unit descriptors shaped like the check's (one per real image, one per generated
image), the generated side drawn from the same distribution as the real one, 1 % of it planted
near copies of real images (a real descriptor plus small noise), in two regimes:

- ``bounded``: content clusters of bounded size — N / ``--cluster-size`` clusters, so new
  images bring new content and each content has a bounded number of close variants (20° from
  its centre). Contents sit in topics (30° apart from theirs), ``--branch`` per topic, topics in
  themes (40°), ``--branch`` per theme; the themes are random. Any exact search scans the
  query's own content; what it must not do is read more as N grows.
- ``growing``: the earlier benchmark's data — √N / 2 random clusters, so each holds 2√N
  descriptors (~20° spread): any exact search scans the query's own cluster, and per-query
  cost grows as √N whatever the index.

Each (regime, size, implementation) runs in its own process (peak RSS per run). Reported: index
build and search seconds, seconds per 1k queries (build + search), lists (IVF lists or cone-tree
leaves) read per query, brute-force
seconds (measured up to ``--brute-max``, extrapolated as N² from the largest measured size
beyond, marked *), agreement with brute force on a 2,000-query sample (checked in blocks of
queries, never a 2,000 × N matrix), planted near copies found, peak RSS.
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

from blindspot_assets.stats.memorization import NearestIndex  # noqa: E402

REGIMES = ("bounded", "growing")


def _rotate(parents: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Each unit row of ``parents`` turned by ``degrees`` towards a random direction."""
    u = torch.randn(parents.shape, generator=g)
    u = torch.nn.functional.normalize(u - (u * parents).sum(1, keepdim=True) * parents, dim=1)
    angle = math.radians(degrees)
    return math.cos(angle) * parents + math.sin(angle) * u


def bounded_centres(n: int, dim: int, cluster: int, branch: int) -> torch.Tensor:
    """Unit centres of ⌈n / cluster⌉ contents: themes → topics (40°) → contents (30°)."""
    g = torch.Generator().manual_seed(0)
    n_content = -(-n // cluster)
    n_topic = -(-n_content // branch)
    n_theme = -(-n_topic // branch)
    themes = torch.nn.functional.normalize(torch.randn(n_theme, dim, generator=g), dim=1)
    topics = _rotate(themes[torch.arange(n_topic) % n_theme], 40.0, g)
    return _rotate(topics[torch.arange(n_content) % n_topic], 30.0, g)


def descriptors(n: int, centres: torch.Tensor, regime: str, seed: int) -> torch.Tensor:
    """n descriptors around random ``centres``: 20° turns (bounded), or the earlier benchmark's
    0.35 Gaussian noise around unnormalised centres (growing)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, centres.shape[1])
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        pick = torch.randint(len(centres), (b - a,), generator=g)
        if regime == "bounded":
            out[a:b] = _rotate(centres[pick], 20.0, g)
        else:
            out[a:b] = centres[pick] + 0.35 * torch.randn(b - a, centres.shape[1], generator=g)
    return torch.nn.functional.normalize(out, dim=1)


def brute(queries: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocked full matmul: blocks of queries, at most 2^26 similarities at a time."""
    block = max(1, (1 << 26) // max(1, refs.shape[0]))
    best, arg = [], []
    for a in range(0, queries.shape[0], block):
        v, i = (queries[a : a + block] @ refs.T).max(dim=1)
        best.append(v)
        arg.append(i)
    return torch.cat(best), torch.cat(arg)


def _before_index(rev: str) -> Any:
    """``ConeIndex`` from stats/memorization.py as it was at git ``rev``."""
    import importlib.util
    import tempfile

    text = subprocess.run(
        ["git", "show", f"{rev}:blindspot_assets/stats/memorization.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "memorization_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("memorization_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.ConeIndex


def _search(impl: str, refs: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(build s, search s, nearest ids, lists read per query, lists) for one implementation."""
    ids = np.arange(len(refs), dtype=np.int64)
    t0 = time.perf_counter()
    index = _before_index(args.before)(refs, ids) if impl == "before" else NearestIndex(refs, ids)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    if impl == "before":
        arg = index.search(queries)[1]
        lists = len(index.centres)
    else:
        arg = torch.from_numpy(index.search(queries.numpy(), 1)[1][:, 0])
        lists = index.n_lists
    search = time.perf_counter() - t0
    return build, search, arg, index.lists_scanned / len(queries), lists


def one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    if args.regime == "bounded":
        centres = bounded_centres(n, args.dim, args.cluster_size, args.branch)
    else:
        centres = torch.randn(max(1, round(math.sqrt(n) / 2)), args.dim, generator=g)
    refs = descriptors(n, centres, args.regime, 1)
    queries = descriptors(n, centres, args.regime, 2)
    n_copy = n // 100
    queries[:n_copy] = torch.nn.functional.normalize(
        refs[:n_copy] + 0.02 * torch.randn(n_copy, args.dim, generator=g), dim=1
    )
    build, search, arg_all, read, lists = _search(args.impl, refs, queries, args)
    sample = torch.randperm(n, generator=g)[: min(n, 2000)]
    out: dict[str, Any] = {
        "regime": args.regime,
        "impl": args.impl,
        "n": n,
        "lists": lists,
        "build_s": build,
        "search_s": search,
        "s_per_1k_queries": (build + search) / n * 1000,
        "lists_per_query": read,
        "agree_with_brute_on_sample": float(
            (arg_all[sample] == brute(queries[sample], refs)[1]).float().mean()
        ),  # fmt: skip
        "planted_found": float((arg_all[:n_copy] == torch.arange(n_copy)).float().mean()),
    }
    if n <= args.brute_max and args.impl == "after":
        t0 = time.perf_counter()
        brute(queries, refs)
        out["brute_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["load"] = [load, os.getloadavg()[0]]
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    measured = [r for r in rows if "brute_s" in r]
    print(f"\nregime {rows[0]['regime']}")
    heads = [("N", 9), ("impl", 7), ("lists", 7), ("build s", 9), ("search s", 10),
             ("s/1k q", 8), ("lists/q", 9), ("brute s", 10), ("agree", 7), ("planted", 8),
             ("RSS MB", 8), ("load", 10)]  # fmt: skip
    print("".join(f"{h:>{w}}" for h, w in heads))
    for r in rows:
        brute_s = next((m["brute_s"] for m in measured if m["n"] == r["n"]), float("nan"))
        if brute_s != brute_s and measured:  # not measured at this size
            brute_s = measured[-1]["brute_s"] * (r["n"] / measured[-1]["n"]) ** 2
        mark = "" if any(m["n"] == r["n"] for m in measured) else "*"
        print(
            f"{r['n']:>9}{r['impl']:>7}{r['lists']:>7}{r['build_s']:>9.1f}{r['search_s']:>10.1f}"
            f"{r['s_per_1k_queries']:>8.3f}{r['lists_per_query']:>9.1f}{brute_s:>9.0f}{mark:1}"
            f"{r['agree_with_brute_on_sample']:>7.3f}{r['planted_found']:>8.3f}"
            f"{r['peak_rss_mb']:>8.0f}{r['load'][0]:>5.1f}-{r['load'][1]:<4.1f}"
        )
    print("* extrapolated as N² from the largest measured size")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cluster-size", type=int, default=100, help="bounded: mean per content")
    ap.add_argument("--branch", type=int, default=10, help="bounded: contents per topic etc.")
    ap.add_argument("--before", default=None, help="git revision of the old ConeIndex; none: skip")
    ap.add_argument("--brute-max", type=int, default=100_000)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--regime", choices=REGIMES, default="bounded", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=("before", "after"), default="after", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}, before: {args.before or 'not run'}"
    )
    tables = []
    impls = ["before", "after"] if args.before else ["after"]
    for regime in args.regimes:
        rows = []
        for n in args.sizes:
            for impl in impls:
                cmd = [sys.executable, __file__, "--one", str(n), "--regime", regime,
                       "--impl", impl]  # fmt: skip
                for flag in ("dim", "cluster_size", "branch", "brute_max", "before"):
                    if getattr(args, flag) is not None:
                        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
        tables.append(rows)
    for rows in tables:
        print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()

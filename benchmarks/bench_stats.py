"""Time and peak memory of the full blindspot statistics on synthetic sparse codes.

Synthetic codes with a realistic L0: every image has ``--concepts-per-image`` distinct active
concepts (default 1,500 of 32,000 — DINOv2's 261 tokens × top-32 codes share most concepts),
drawn without replacement from a Zipf-like concept popularity; a concept fires on ``nfire``
(geometric) tokens and its per-image energy ξ is the sum of ``nfire`` Gamma(1.5, 0.7) token
activations. The generated side is the real side with 10 % of its concepts dropped, a few added
and two planted blindspots (one concept gone, one doubled).

Two modes, each size run in its own process so peak RSS is that size's alone:
- ``zarr``: writes real and generated code row stores (the pipeline's layout) to a temporary
  folder, then runs exactly what the assets run: ``compute_concept_stats`` (energies, δ,
  bootstrap, permutations, BH), ``flag_blindspots``, ``top_images_per_concept``,
  ``datapoint_deltas``. Writing is not timed.
- ``stream``: streams synthetic blocks straight through the same accumulators (no disk), for
  sizes whose Zarr stores would not fit here (1M images × 32,000 float32 ξ = 128 GB raw).

``.venv/bin/python benchmarks/bench_stats.py --sizes 10000 100000 --modes zarr stream``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindspot_assets.stats import (
    BlindspotParams,
    compute_concept_stats,
    compute_datapoint_deltas,
    flag_blindspots,
    top_images_per_concept,
)
from blindspot_assets.stats.concepts import concept_stats_frame, update_paired
from blindspot_assets.stats.energy import EnergyAccumulator
from blindspot_assets.stats.top_images import TopKAccumulator
from blindspot_assets.stats.uncertainty import PairedDiffAccumulator

GONE, DOUBLED = 7, 11  # planted: concept 7 never generated, concept 11 doubled


def _distinct(rng: np.random.Generator, log_pop_c: np.ndarray, rows: int, k: int) -> np.ndarray:
    """``k`` distinct concepts for each of ``rows`` images (64 at a time: small temporaries)."""
    keys = log_pop_c[None, :] - np.log(-np.log(rng.random((rows, log_pop_c.size), np.float32)))
    return np.argpartition(-keys, k - 1, axis=1)[:, :k].reshape(-1)


def synthetic_blocks(
    n_images: int, n_concepts: int, per_image: int, block_rows: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(xi_real, nfire_real, xi_gen, nfire_gen)`` blocks of ``block_rows`` images."""
    rng = np.random.default_rng(seed)
    popularity_c = 1.0 / np.arange(1, n_concepts + 1) ** 0.7
    popularity_c = popularity_c[rng.permutation(n_concepts)]
    popularity_c /= popularity_c.sum()
    log_pop_c = np.log(popularity_c).astype(np.float32)
    for start in range(0, n_images, block_rows):
        m = min(block_rows, n_images - start)
        rows = np.repeat(np.arange(m), per_image)
        # ``per_image`` distinct concepts per image, by popularity (Gumbel top-k: sampling
        # without replacement; drawing with replacement gave ≈ 1,288 distinct, not 1,500)
        cols = np.concatenate(
            [_distinct(rng, log_pop_c, min(64, m - a), per_image) for a in range(0, m, 64)]
        )
        nfire = rng.geometric(0.4, size=rows.size).astype(np.uint16)
        # ξ = Σ over the nfire tokens of Gamma(1.5, 0.7) activations = Gamma(1.5 · nfire, 0.7)
        xi = rng.gamma(1.5 * nfire, 0.7).astype(np.float32)
        xi_real = np.zeros((m, n_concepts), np.float32)
        nfire_real = np.zeros((m, n_concepts), np.uint16)
        xi_real[rows, cols] = xi
        nfire_real[rows, cols] = nfire
        keep = rng.random(rows.size) > 0.1
        xi_gen = np.zeros_like(xi_real)
        nfire_gen = np.zeros_like(nfire_real)
        xi_gen[rows[keep], cols[keep]] = xi[keep] * rng.uniform(0.8, 1.2, int(keep.sum()))
        nfire_gen[rows[keep], cols[keep]] = nfire[keep]
        added = rng.choice(n_concepts, size=m * per_image // 20, p=popularity_c)
        added_rows = rng.integers(0, m, size=added.size)
        xi_gen[added_rows, added] = rng.gamma(1.5, 0.7, size=added.size).astype(np.float32)
        nfire_gen[added_rows, added] = 1
        xi_gen[:, GONE] = 0.0
        nfire_gen[:, GONE] = 0
        xi_gen[:, DOUBLED] *= 2.0
        yield xi_real, nfire_real, xi_gen, nfire_gen


def run_stream(n: int, c: int, per_image: int, params: BlindspotParams) -> dict[str, Any]:
    t0 = time.perf_counter()
    real, gen = EnergyAccumulator(c), EnergyAccumulator(c)
    diff = PairedDiffAccumulator(c, n, params.n_bootstrap, params.n_permutations, params.seed)
    top = TopKAccumulator(c, params.top_images)
    gen_s = 0.0
    blocks = synthetic_blocks(n, c, per_image, params.block_rows, params.seed)
    start = 0
    pool = ThreadPoolExecutor(1)
    while True:
        g0 = time.perf_counter()
        block = next(blocks, None)
        gen_s += time.perf_counter() - g0
        if block is None:
            break
        xi_real, nfire_real, xi_gen, nfire_gen = block
        real_block, gen_block = (
            {"xi": xi_real, "nfire": nfire_real},
            {"xi": xi_gen, "nfire": nfire_gen},
        )
        update_paired(real, gen, diff, real_block, gen_block, pool)  # as compute_concept_stats
        top.update(xi_real, np.arange(start, start + xi_real.shape[0]))
        # the datapoint distances, as compute_datapoint_deltas takes them
        torch.linalg.vector_norm(torch.from_numpy(xi_gen) - torch.from_numpy(xi_real), dim=1)
        start += xi_real.shape[0]
    stats = concept_stats_frame(real, gen, diff.finish(params.ci_level), params)
    flagged = flag_blindspots(stats, params)
    total = time.perf_counter() - t0
    return _result("stream", n, c, total - gen_s, gen_s, stats, flagged)


def run_zarr(n: int, c: int, per_image: int, params: BlindspotParams) -> dict[str, Any]:
    from blindspot_assets.store.layout import code_arrays
    from blindspot_assets.store.rowstore import RowStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    ids = [f"img{i:08d}" for i in range(n)]
    arrays = {k: v for k, v in code_arrays(261, c, 64).items() if k in ("xi", "nfire")}
    stores = {
        side: RowStore.create_or_resume(tmp / f"{side}.zarr", ids, arrays, {"fingerprint": side})
        for side in ("real", "gen")
    }
    w0 = time.perf_counter()
    start = 0
    for xi_real, nfire_real, xi_gen, nfire_gen in synthetic_blocks(
        n, c, per_image, params.block_rows, params.seed
    ):
        m = xi_real.shape[0]
        ok = np.ones(m, bool)
        stores["real"].write_block(start, {"xi": xi_real, "nfire": nfire_real}, ok, ["ok"] * m)
        stores["gen"].write_block(start, {"xi": xi_gen, "nfire": nfire_gen}, ok, ["ok"] * m)
        start += m
    write_s = time.perf_counter() - w0
    disk_mb = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
    t0 = time.perf_counter()
    stats = compute_concept_stats(tmp / "real.zarr", tmp / "gen.zarr", params)
    flagged = flag_blindspots(stats, params)
    t1 = time.perf_counter()
    top_images_per_concept(tmp / "real.zarr", params.top_images, block_rows=params.block_rows)
    t2 = time.perf_counter()
    compute_datapoint_deltas(tmp / "real.zarr", tmp / "gen.zarr", block_rows=params.block_rows)
    t3 = time.perf_counter()
    out = _result("zarr", n, c, t3 - t0, write_s, stats, flagged)
    out.update(stats_s=t1 - t0, top_images_s=t2 - t1, datapoints_s=t3 - t2, disk_mb=disk_mb)
    return out


def resampling_gflops(c: int, params: BlindspotParams, repeats: int = 3) -> float:
    """Best measured rate of the statistics' dominant op, on its own shape: the (B + P) × m
    resampling weights times an m × c block of paired differences (``addmm_``)."""
    r, m = params.n_bootstrap + params.n_permutations, params.block_rows
    acc, w, d = torch.zeros(r, c), torch.rand(r, m), torch.rand(m, c)
    acc.addmm_(w, d)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc.addmm_(w, d)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * r * m * c / best / 1e9


def flop_estimate_s(n: int, c: int, params: BlindspotParams, gflops: float) -> float:
    """Seconds the resampling matmuls of ``n`` pairs take at ``gflops``: 2·(B + P)·n·c."""
    return 2.0 * (params.n_bootstrap + params.n_permutations) * n * c / (gflops * 1e9)


def _result(mode: str, n: int, c: int, compute_s: float, other_s: float, stats: Any,
            flagged: Any) -> dict[str, Any]:  # fmt: skip
    by_concept = {r["concept"]: r for r in flagged.iter_rows(named=True)}
    return {
        "mode": mode,
        "n_images": n,
        "n_concepts": c,
        "compute_s": compute_s,
        "synth_or_write_s": other_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_flagged": flagged.height,
        "n_significant": int(flagged["significant"].sum()),
        "planted_gone_found": bool(by_concept.get(GONE, {}).get("significant", False)),
        "planted_doubled_found": bool(by_concept.get(DOUBLED, {}).get("significant", False)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--modes", nargs="+", default=["zarr", "stream"], choices=["zarr", "stream"])
    ap.add_argument("--concepts", type=int, default=32_000)
    ap.add_argument("--concepts-per-image", type=int, default=1_500)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--block-rows", type=int, default=512)
    ap.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    params = BlindspotParams(n_bootstrap=args.bootstrap, n_permutations=args.permutations,
                             block_rows=args.block_rows)  # fmt: skip
    if args.one:
        mode, n = args.one[0], int(args.one[1])
        run = run_zarr if mode == "zarr" else run_stream
        print(json.dumps(run(n, args.concepts, args.concepts_per_image, params)))
        return
    print(f"concepts={args.concepts} concepts/image={args.concepts_per_image} "
          f"B={args.bootstrap} P={args.permutations} block_rows={args.block_rows}")  # fmt: skip
    header = f"{'mode':6} {'images':>9} {'compute s':>10} {'s/1k img':>9} {'peak RSS MB':>12} " \
             f"{'flagged':>8} {'signif':>7} {'planted':>7} {'FLOP est s':>10} " \
             f"{'ratio':>7}"  # fmt: skip
    print(header)
    for mode in args.modes:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--one", mode, str(n), "--concepts",
                   str(args.concepts), "--concepts-per-image", str(args.concepts_per_image),
                   "--bootstrap", str(args.bootstrap), "--permutations", str(args.permutations),
                   "--block-rows", str(args.block_rows)]  # fmt: skip
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                             .stdout.strip().splitlines()[-1])  # fmt: skip
            gflops = resampling_gflops(args.concepts, params)  # same run, right after
            out["resampling_gflops"] = gflops
            out["flop_estimate_s"] = flop_estimate_s(n, args.concepts, params, gflops)
            planted = "yes" if out["planted_gone_found"] and out["planted_doubled_found"] else "NO"
            line = (f"{mode:6} {n:>9} {out['compute_s']:>10.1f} "
                    f"{1000 * out['compute_s'] / n:>9.2f} {out['peak_rss_mb']:>12.0f} "
                    f"{out['n_flagged']:>8} {out['n_significant']:>7} {planted:>7} "
                    f"{out['flop_estimate_s']:>10.1f} "
                    f"{out['compute_s'] / out['flop_estimate_s']:>6.2f}×")  # fmt: skip
            print(line, flush=True)
            print("   ", json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

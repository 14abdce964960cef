"""Time per model of the distribution metrics (docs/method.md §9) with and without the cached
real side (``stats/distribution.py: real_side``, ``store/derived.py``).

A synthetic world of feature stores written to a temporary folder (writing is not timed): a
real store of ``--n`` CLS vectors in ``--d`` dimensions (one token per row, float16 as the
pipeline stores them; Gaussian with a decaying spectrum) and ``--models`` generated stores of
``--samples`` images per caption (ids ``<id>~s<s>``), each a shifted, rescaled draw. Per model,
the same ``store_metrics`` call the ``model_comparison`` asset makes:

- ``no cache``: the real side computed for this model (the code before the cache);
- ``cache miss``: computed and written (the run's first model);
- ``cache hit``: read back (every further model, and every pair).

With ``--demo DATA_ROOT`` it times the demo's own stores the same way instead.

``.venv/bin/python benchmarks/bench_distribution.py --n 10000 --d 768``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blindspot_assets.stats.distribution import DistributionParams, store_metrics
from blindspot_assets.store.images import sample_image_id
from blindspot_assets.store.layout import feature_arrays
from blindspot_assets.store.rowstore import RowStore


def write_store(path: Path, ids: list[str], cls: np.ndarray, fingerprint: str) -> Path:
    store = RowStore.create_or_resume(
        path,
        ids,
        feature_arrays(1, cls.shape[1]),
        attrs={"fingerprint": fingerprint, "encoder_id": "synthetic"},
        chunk_rows=512,
    )
    for start in range(0, len(ids), 512):
        stop = min(start + 512, len(ids))
        block = cls[start:stop, None, :].astype(np.float16)
        store.write_block(
            start, {"tokens": block}, np.ones(stop - start, bool), ["ok"] * (stop - start)
        )
    store.finish()
    return path


def synthetic_world(root: Path, n: int, d: int, samples: int, models: int) -> list[Path]:
    """The real store and ``models`` generated stores; returns [real, gen …]."""
    rng = np.random.default_rng(0)
    scale = 1.0 / np.sqrt(1.0 + np.arange(d))  # a decaying spectrum, like CLS features
    ids = [f"img{i:06d}" for i in range(n)]
    stores = [write_store(root / "real.zarr", ids, rng.normal(size=(n, d)) * scale, "real")]
    gen_ids = [sample_image_id(i, s) for i in ids for s in range(samples)]
    for m in range(models):
        x = rng.normal(size=(n * samples, d)) * scale * (1.0 + 0.05 * m) + 0.01 * (m + 1)
        stores.append(write_store(root / f"gen-{m}.zarr", gen_ids, x, f"gen-{m}"))
    return stores


def timed(
    real: Path, gen: Path, params: DistributionParams, cache: Path | None
) -> tuple[float, float]:
    start = time.perf_counter()
    cpu = time.process_time()
    store_metrics(real, gen, params, cache)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10_000, help="real images (captions)")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--samples", type=int, default=1, help="generated images per caption")
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=50)
    ap.add_argument("--demo", type=Path, default=None, help="a demo run's data root")
    args = ap.parse_args()
    params = DistributionParams(n_bootstrap=args.bootstrap)
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo is not None:
            names = ["real", "control-copy", "control-redraw", "demo-a", "demo-b", "demo-a-v2"]
            stores = [args.demo / "features" / f"{name}.zarr" for name in names]
            world = f"demo ({args.demo})"
        else:
            stores = synthetic_world(Path(tmp), args.n, args.d, args.samples, args.models)
            world = f"synthetic n={args.n} d={args.d} samples={args.samples}"
        cache = Path(tmp) / "derived"
        real, gens = stores[0], stores[1:]
        rows = [("no cache", *timed(real, g, params, None)) for g in gens]
        rows.append(("cache miss", *timed(real, gens[0], params, cache)))
        rows += [("cache hit", *timed(real, g, params, cache)) for g in gens]
        entry = sum(p.stat().st_size for p in cache.rglob("*.npz"))
    print(f"{world}, {args.bootstrap} resamples, {os.cpu_count()} cores, pid {os.getpid()}")
    print(f"{'mode':<12}{'wall s/model':>14}{'cpu s/model':>13}")
    for mode in ("no cache", "cache miss", "cache hit"):
        wall = [w for m, w, _ in rows if m == mode]
        cpu = [c for m, _, c in rows if m == mode]
        print(f"{mode:<12}{np.mean(wall):>14.2f}{np.mean(cpu):>13.2f}")
    print(f"cache entry: {entry / 2**20:.1f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Peak memory and wall time of the whole Dagster graph on the demo world, at growing sizes.

Runs ``dagster job execute -j blindspot_job`` (in-process executor, every model partition) in a
fresh data root and DAGSTER_HOME per size, samples the resident memory of the whole process tree
every 0.2 s, and reads each step's duration from the run's event log.

Run by hand: ``.venv/bin/python benchmarks/bench_graph.py --sizes 1000 10000``; prints a table
per size and a summary (time per 1k images, peak RSS) to paste into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")


def _tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of ``root_pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class PeakSampler(threading.Thread):
    """Resident memory of a process tree every ``every_s``: the peak, and the samples (wall
    clock, bytes) to attribute peaks to steps."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self.stop = pid, every_s, 0, threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            rss = _tree_rss_bytes(self.pid)
            self.samples.append((time.time(), rss))
            self.peak = max(self.peak, rss)
            time.sleep(self.every_s)

    def peak_between(self, start: float, end: float) -> int:
        return max((b for t, b in self.samples if start <= t <= end), default=0)


def step_windows(home: Path) -> dict[str, tuple[float, float]]:
    """(start, end) wall-clock times of every step of the (only) run in ``home``."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return {}
        stats = instance.get_run_step_stats(runs[0].run_id)
        return {
            s.step_key: (s.start_time, s.end_time or s.start_time)
            for s in stats
            if s.start_time is not None
        }


def run_size(
    n_images: int, workdir: Path, sae_epochs: int | None, sae_max_tokens: int | None = None
) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["data_root"] = str(workdir / "data")
    raw["encoder"]["model_id"] = str(workdir / "tiny-dinov2")
    raw["real"]["n_images"] = n_images
    if sae_epochs is not None:
        raw["sae"]["epochs"] = sae_epochs
    if sae_max_tokens is not None:
        raw["sae"]["max_tokens"] = sae_max_tokens
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    models = list(raw["models"])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BLINDSPOT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    tags = {
        "dagster/asset_partition_range_start": models[0],
        "dagster/asset_partition_range_end": models[-1],
    }
    cmd = [
        DAGSTER,
        "job",
        "execute",
        "-m",
        "blindspot_assets.definitions",
        "-j",
        "blindspot_job",
        "-c",
        str(REPO / "configs" / "in_process.yaml"),
        "--tags",
        json.dumps(tags),
    ]
    log = (workdir / "run.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    log.close()
    if rc != 0:
        tail = (workdir / "run.log").read_text()[-3000:]
        raise RuntimeError(f"the graph failed at {n_images} images (rc={rc}):\n{tail}")
    windows = step_windows(home)
    data_bytes = sum(f.stat().st_size for f in (workdir / "data").rglob("*") if f.is_file())
    return {
        "n_images": n_images,
        "wall_s": wall,
        "peak_rss_mb": sampler.peak / 2**20,
        "data_mb": data_bytes / 2**20,
        "steps": {k: b - a for k, (a, b) in windows.items()},
        "step_peak_rss_mb": {
            k: sampler.peak_between(a, b) / 2**20 for k, (a, b) in windows.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--sae-epochs", type=int, default=None, help="override demo.yaml's epochs")
    ap.add_argument(
        "--sae-max-tokens", type=int, default=None, help="SAE token budget (sae.max_tokens)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the data roots")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-graph-{n}-"))
        res = run_size(n, workdir, args.sae_epochs, args.sae_max_tokens)
        results.append(res)
        print(f"\n## {n} images: wall {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB")
        print(f"{'step':48s} {'seconds':>9s} {'s / 1k images':>14s} {'peak RSS MB':>12s}")
        for step, sec in sorted(res["steps"].items(), key=lambda kv: -kv[1]):
            peak = res["step_peak_rss_mb"][step]
            print(f"{step:48s} {sec:9.1f} {1000 * sec / n:14.2f} {peak:12.0f}")
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print("\n| images | wall (s) | s / 1k images | peak RSS (MB) | data on disk (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['n_images']} | {r['wall_s']:.0f} | {1000 * r['wall_s'] / r['n_images']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['data_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()

"""Run a paper-shapes config through ``dagster job execute`` and measure it.

    .venv/bin/python benchmarks/paper_shapes/measure.py configs/paper-shapes-256.yaml \\
        --out benchmarks/paper_shapes/results-256.json

Prepare the encoder and the SAE checkpoint first (``python -m blindspot_assets.demo.paper_shapes``).
The job runs in one process (``configs/in_process.yaml``, what a laptop runs) over every model
partition, with ``DAGSTER_HOME`` under the run's data root (its own run history and pool slots).
A sampler reads the job's process tree from ``/proc`` every 0.5 s; after the run, each step's
wall time comes from the Dagster event log (STEP_START → STEP_SUCCESS/FAILURE) and its peak
RSS is the largest tree RSS sampled inside that window. Then the sizes of every store, table
and the report, every table's rows and schema, and the report's load time in headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from blindspot_assets.config import load_config  # noqa: E402


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    def __init__(self, root: int, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.period = root, period
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = sum(_rss_mb(p) for p in _tree(self.root))
            self.samples.append((time.time(), total))
            self.stop.wait(self.period)


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _steps(
    dagster_home: Path, samples: list[tuple[float, float]]
) -> tuple[str, list[dict[str, Any]]]:
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    starts: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for rec in instance.all_logs(run.run_id):
        ev = rec.dagster_event
        if ev is None or not ev.step_key:
            continue
        kind = ev.event_type_value
        if kind == "STEP_START":
            starts[ev.step_key] = rec.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            a, b = starts[ev.step_key], rec.timestamp
            inside = [r for t, r in samples if a - 0.5 <= t <= b + 0.5]
            before = [r for t, r in samples if t <= a]
            rows.append({
                "step": ev.step_key, "status": kind, "start": a, "seconds": round(b - a, 2),
                "peak_rss_mb": round(max(inside), 0) if inside else None,
                "rss_at_start_mb": round(before[-1], 0) if before else None,
            })  # fmt: skip
    return run.status.value, rows


def _tables(cfg: Any) -> dict[str, Any]:
    import polars as pl

    out: dict[str, Any] = {}
    for folder in sorted(p for p in cfg.layout.tables.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.parquet"))
        if not files:
            out[folder.name] = {"files": 0}
            continue
        frames = [pl.read_parquet(f) for f in files]
        out[folder.name] = {
            "files": len(files),
            "rows": sum(f.height for f in frames),
            "bytes": sum(f.stat().st_size for f in files),
            "schema": {k: str(v) for k, v in frames[0].schema.items()},
        }
    return out


def _report_load(index: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.ui.browser import Browser, ensure_chromium

    exe = ensure_chromium()
    if exe is None:
        return {"error": "no chromium"}
    with Browser(exe) as browser:
        t0 = time.perf_counter()
        browser.open(index.resolve().as_uri(), timeout_s=300)
        loaded = time.perf_counter() - t0
        broken = browser.load_all_images(timeout_ms=120000)
        images = time.perf_counter() - t0
        timing = browser.evaluate(
            "JSON.stringify({dcl: performance.timing.domContentLoadedEventEnd - "
            "performance.timing.navigationStart, load: performance.timing.loadEventEnd - "
            "performance.timing.navigationStart, imgs: document.images.length, "
            "nodes: document.getElementsByTagName('*').length})"
        )
        problems = browser.report().problems
    return {
        "open_s": round(loaded, 2),
        "all_images_s": round(images, 2),
        "navigation_timing": json.loads(timing),
        "broken_images": len(broken),
        "problems": problems[:10],
    }


def _stage(step: str) -> str:
    """A step's stage: the asset it belongs to (shards and merges together), or its check."""
    return step.split(".", 1)[0]


def markdown(result: dict[str, Any]) -> str:
    """The per-stage table (wall time summed over its steps, peak RSS) and the size table."""
    stages: dict[str, list[float]] = {}
    for row in result["steps"]:
        acc = stages.setdefault(_stage(row["step"]), [0.0, 0.0, 0])
        acc[0] += row["seconds"]
        acc[1] = max(acc[1], row["peak_rss_mb"] or 0)
        acc[2] += 1
    total = sum(a[0] for a in stages.values())
    lines = [
        "| stage | steps | seconds | share | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (sec, rss, n) in sorted(stages.items(), key=lambda kv: -kv[1][0]):
        if sec >= 1 or rss >= 0:
            lines.append(f"| {name} | {n} | {sec:,.1f} | {100 * sec / total:.1f}% | {rss:,.0f} |")
    lines += ["", "| store / file | MB |", "| --- | ---: |"]
    for name, size in result["sizes"].items():
        lines.append(f"| {name} | {size / 1e6:,.1f} |")
    lines += ["", "| table | files | rows | MB | columns |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, t in result["tables"].items():
        if t.get("files"):
            lines.append(
                f"| {name} | {t['files']} | {t['rows']:,} | {t['bytes'] / 1e6:,.2f} "
                f"| {len(t['schema'])} |"
            )
        else:
            lines.append(f"| {name} | 0 | 0 | 0 | – |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-run", action="store_true", help="only measure a finished run")
    ap.add_argument("--markdown", action="store_true", help="print --out's tables as Markdown")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    cfg = load_config(args.config)
    root = cfg.layout.root
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    keys = list(cfg.models)
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "BLINDSPOT_CONFIG": str(Path(args.config).resolve())}  # fmt: skip
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}  # fmt: skip
    cmd = [str(REPO / ".venv/bin/dagster"), "job", "execute", "-m", "blindspot_assets.definitions",
           "-j", "blindspot_job", "-c", str(REPO / "configs/in_process.yaml"),
           "--tags", json.dumps(tags)]  # fmt: skip
    # paths relative to the repository: the record is committed
    shown = " ".join(cmd).replace(f"{REPO}/", "")
    result: dict[str, Any] = {"config": args.config, "command": shown}
    if not args.skip_run:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        result["commit"] = commit
        t0 = time.time()
        log = open(root / "job.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        sampler = Sampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
        result.update(rc=rc, wall_s=round(time.time() - t0, 1),
                      peak_rss_mb=round(max(r for _, r in sampler.samples), 0),
                      load_avg=os.getloadavg())  # fmt: skip
        (root / "rss_samples.json").write_text(json.dumps(sampler.samples))
    samples = json.loads((root / "rss_samples.json").read_text())
    if args.skip_run:  # the whole job's span and peak, from the samples it left
        result.update(wall_s=round(samples[-1][0] - samples[0][0], 1),
                      peak_rss_mb=round(max(r for _, r in samples), 0))  # fmt: skip
    result["run_status"], result["steps"] = _steps(home, samples)
    result["sizes"] = {
        str(p.relative_to(root)): _du(p)
        for sub in ("images", "features", "codes", "sae", "tables", "report")
        if (root / sub).exists()
        for p in sorted((root / sub).iterdir())
    }
    result["sizes"]["blindspots.duckdb"] = _du(root / "blindspots.duckdb")
    result["sizes"]["report/index.html"] = _du(root / "report" / "index.html")
    result["sae_source_bytes"] = _du(Path(str(cfg.sae.pretrained)))
    result["tables"] = _tables(cfg)
    result["report_load"] = _report_load(root / "report" / "index.html")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("steps", "tables")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

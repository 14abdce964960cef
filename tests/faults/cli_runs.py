"""Helpers of the process-level fault trials: the real CLI in a subprocess, on a tiny world.

``CliRun`` starts ``dagster ...`` (or ``./run demo``) and reads its log as it is written, so a
trial waits for "this step is running now" (a log line of the step) instead of sleeping, then
signals the process. ``outputs`` reads everything a run produces (images, Zarr arrays, SAE
weights, tables) in a comparable form.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr
from safetensors.numpy import load_file

from tests.conftest import REPO, demo_config_dict, write_config

BIN = Path(sys.executable).parent
RANGE = ["--tags", '{"dagster/asset_partition_range_start": "demo-a", '
         '"dagster/asset_partition_range_end": "demo-b"}']  # fmt: skip
MODULE = ["-m", "blindspot_assets.definitions"]
IN_PROCESS = ["-c", str(REPO / "configs" / "in_process.yaml")]
WHOLE_GRAPH = ["job", "execute", *MODULE, "-j", "blindspot_job", *IN_PROCESS, *RANGE]
# a step's event line: "... - <pid> - <step key> - STEP_START - ..."
EVENT = re.compile(r" - (\d+) - (\S+) - ([A-Z_]+) - ")


def tiny_world(root: Path) -> tuple[Path, Path]:
    """A run config of 32 demo images with a tiny SAE and few resamples (a whole-graph run is
    ~25 s on 2 cores), and an empty DAGSTER_HOME with the project's dagster.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    raw = demo_config_dict(root, n_images=32)
    raw["encoder"]["batch_size"] = 8  # several batches per store: a kill lands mid-store
    raw["sae"].update({"n_concepts": 32, "n_candidates": 64, "epochs": 2})
    raw["stats"].update({"n_bootstrap": 20, "n_permutations": 20})
    config = write_config(root, raw)
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return config, home


def cli_env(config: Path, home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BLINDSPOT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the same arithmetic in every run
        "PYTHONPATH": str(REPO),
        **extra,
    }


class CliRun:
    """A CLI command in a subprocess whose output (stdout and stderr) is read line by line."""

    def __init__(self, args: list[str], env: dict[str, str], exe: str | None = None) -> None:
        cmd = [exe] if exe else [str(BIN / "dagster")]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*cmd, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # signals reach only what the test sends them to
        )
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line.rstrip("\n"))
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match[str]:
        """The first output line matching ``pattern`` (a regex), waiting for it to be written."""
        regex = re.compile(pattern)
        seen = 0
        deadline = time.monotonic() + timeout
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(f"no line matching {pattern!r}; last output:\n{tail}")
                self._new.wait(timeout=1.0)

    def wait_for_step(self, step_key: str, event: str = "STEP_START") -> int:
        """Wait until ``step_key`` logs ``event``; returns the pid that logged it."""
        return int(self.wait_for(rf" - (\d+) - {re.escape(step_key)} - {event} - ").group(1))

    def signal(self, sig: int, pid: int | None = None) -> None:
        os.kill(pid or self.proc.pid, sig)

    def finish(self, timeout: float = 300.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s:\n{self.text[-4000:]}") from None
        self._reader.join(timeout=10)
        return code

    def succeed(self, timeout: float = 300.0) -> None:
        code = self.finish(timeout)
        assert code == 0, f"exit {code}:\n{self.text[-6000:]}"

    def run_id(self) -> str:
        return self.wait_for(r" - ([0-9a-f-]{36}) - \d+ - RUN_START - ").group(1)


def instance_at(home: Path) -> Any:
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home))


def step_events(home: Path, run_id: str) -> dict[str, set[str]]:
    """{step key: the step event types stored for it} of a run."""
    instance = instance_at(home)
    out: dict[str, set[str]] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.step_key:
            out.setdefault(event.step_key, set()).add(event.event_type_value)
    return out


def outputs(data: Path) -> dict[str, Any]:
    """Everything a run produced under a data root, keyed by relative path: image bytes, Zarr
    arrays, SAE tensors, table rows (without the producing run's id, with the world's root
    written as ``<root>``)."""
    out: dict[str, Any] = {}
    for png in sorted((data / "images").rglob("*.png")):
        out[str(png.relative_to(data))] = png.read_bytes()
    for kind in ("features", "codes"):
        for store in sorted((data / kind).glob("*.zarr")):
            group = zarr.open_group(str(store), mode="r")
            for name, array in group.arrays():
                out[f"{kind}/{store.name}/{name}"] = np.asarray(array[...])
    sae = data / "sae" / "model.safetensors"
    for name, tensor in (load_file(str(sae)) if sae.exists() else {}).items():
        out[f"sae/{name}"] = tensor
    for parquet in sorted((data / "tables").rglob("*.parquet")):
        frame = pl.read_parquet(parquet)
        frame = frame.drop([c for c in ("run_id",) if c in frame]).with_columns(
            pl.col(pl.String).str.replace_all(str(data.parent), "<root>", literal=True)
        )  # paths recorded as provenance (the encoder's folder) name the world's root
        out[str(parquet.relative_to(data))] = frame
    return out


def assert_same_outputs(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    differ = []
    for key, value in want.items():
        other = got[key]
        if isinstance(value, np.ndarray):
            same = value.shape == other.shape and np.array_equal(value, other, equal_nan=True)
        elif isinstance(value, pl.DataFrame):
            same = value.equals(other)
        else:
            same = value == other
        if not same:
            differ.append(key + _frame_difference(value, other))
    assert not differ, f"{len(differ)} outputs differ from the uninterrupted run: {differ[:10]}"


def _frame_difference(want: Any, got: Any) -> str:
    """For two tables of one shape, the columns whose values differ (so a failure says which)."""
    if not isinstance(want, pl.DataFrame) or want.columns != got.columns or want.shape != got.shape:
        return ""
    cols = [c for c in want.columns if not want[c].equals(got[c])]
    return f" (columns {cols[:8]})"


def hold_gpu_slot(home: Path, worker_pid: int) -> str:
    """A run that holds the only `gpu` slot, run by ``worker_pid`` on this host; its run id."""
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from blindspot_assets.defs import recovery

    instance = instance_at(home)
    run = instance.add_run(
        DagsterRun(
            job_name="holder_job",
            status=dg.DagsterRunStatus.STARTED,
            tags={recovery.WORKER_TAG: json.dumps(recovery.worker_identity(worker_pid))},
        )
    )
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default("gpu")
    assert storage.claim_concurrency_slot("gpu", run.run_id, "holder_step").is_claimed
    return str(run.run_id)

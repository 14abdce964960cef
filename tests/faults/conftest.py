"""Fixtures of the fault tests: one thread (so a resumed run and a reference run do the same
arithmetic), a demo world on disk, and a helper that SIGKILLs a worker process mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from blindspot_assets.config import RunConfig, load_config
from blindspot_assets.sources.demo import fetch
from tests.conftest import REPO, demo_config_dict, write_config


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def demo_world(tmp_path: Path) -> tuple[Path, RunConfig]:
    """A 96-image demo world with its real images on disk (two of them truncated files)."""
    raw = demo_config_dict(tmp_path, n_images=96)
    raw["real"]["corrupt_images"] = 2
    path = write_config(tmp_path, raw)
    cfg = load_config(path)
    fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    return path, cfg


def kill_worker_after(kind: str, args: dict[str, object], marker: str, count: int) -> list[str]:
    """Run ``tests.faults.worker KIND`` and SIGKILL it once ``marker`` was printed ``count``
    times; returns its output lines. Fails if the worker finished before it could be killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.worker", kind, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines: list[str] = []
    seen = 0
    deadline = time.monotonic() + 600  # a bound for a loaded machine, not a timing
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(marker):
            seen += 1
            if seen >= count:
                os.kill(proc.pid, signal.SIGKILL)
                break
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr else ""
    # killed at the deadline is not killed after the marker: say so instead of a later mismatch
    assert seen >= count, f"{marker!r} printed {seen} of {count} times in 600 s: {lines[-5:]}"
    assert proc.returncode == -signal.SIGKILL, f"worker was not killed: {lines[-5:]}\n{err[-2000:]}"
    assert "finished" not in lines
    return lines

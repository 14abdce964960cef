"""A step waiting for a `gpu` pool slot that another run holds, through the real CLI: it says
which run holds the slot and how to free it, stops promptly on SIGINT/SIGTERM, fails after
``BLINDSPOT_POOL_TIMEOUT_S``, and takes the slot as soon as its holder is found dead."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from blindspot_assets.config import load_config
from blindspot_assets.defs import recovery
from blindspot_assets.sources.demo import fetch
from tests.faults.cli_runs import (
    IN_PROCESS,
    MODULE,
    CliRun,
    cli_env,
    hold_gpu_slot,
    instance_at,
    tiny_world,
)

pytestmark = pytest.mark.slow
WAITING = r"real_features\.real_features_shard_0 is waiting for a slot of pool 'gpu' held by"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_blocked_step_names_the_holder_stops_on_signals_times_out_and_resumes(
    tmp_path: Path,
) -> None:
    config, home = tiny_world(tmp_path)
    cfg = load_config(config)
    fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    holder = hold_gpu_slot(home, worker_pid=__import__("os").getpid())  # alive: this process
    select = ["asset", "materialize", *MODULE, *IN_PROCESS, "--select", "real_features"]
    instance = instance_at(home)
    stopped = {}

    for sig in (signal.SIGINT, signal.SIGTERM):
        run = CliRun(select, cli_env(config, home))
        line = run.wait_for(WAITING).string
        assert f"step holder_step of run {holder}" in line and " - WARNING - " in line
        assert "`./run slots --free` frees the slots of runs whose process is gone" in line
        t0 = time.monotonic()
        run.signal(sig)
        assert run.finish(timeout=60) != 0
        stopped[sig.name] = time.monotonic() - t0
        run_id = run.run_id()
        assert instance.get_run_by_id(run_id).status.value == "FAILURE"
        assert [h.run_id for h in recovery.slot_holders(instance)] == [holder]
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert not [p for p in info.pending_steps if p.run_id == run_id]  # no claim left behind
    assert max(stopped.values()) < 15, stopped  # ~3 s on 2 idle cores

    timed = CliRun(select, cli_env(config, home, BLINDSPOT_POOL_TIMEOUT_S="3"))
    timed.wait_for(WAITING)
    t0 = time.monotonic()
    assert timed.finish(timeout=60) != 0
    waited = time.monotonic() - t0
    assert 2 < waited < 15, waited
    assert "PoolWaitTimeout" in timed.text
    assert f"free its slots with `./run slots --free --run {holder}`" in timed.text

    # The holder dies while a run waits for its slot: the waiting run releases it and completes.
    last = CliRun(select, cli_env(config, home))
    last.wait_for(WAITING)
    dead = {**recovery.worker_identity(_dead_pid()), "started": ""}
    instance.add_run_tags(holder, {recovery.WORKER_TAG: json.dumps(dead)})
    last.wait_for(rf"stale run {holder} \(STARTED: pid \d+ on .* is gone")
    last.succeed()
    assert instance.get_run_by_id(holder).status.value == "FAILURE"
    assert recovery.slot_holders(instance) == []
    print(f"stopped after {stopped}; timed out {waited:.1f} s after the first wait message")

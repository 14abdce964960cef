"""Runs whose process is gone: find them, mark them failed, free their concurrency-pool slots.

A run whose ``dagster job execute`` process is SIGKILLed (OOM killer, laptop sleep, evicted pod)
stays ``STARTED`` in the instance and keeps its slots of the ``gpu`` pool, so the next run's GPU
steps would wait forever. Every run of this code location records who runs it (run tags, set by
``defs/crash_guard.py`` when its executor starts):

``blindspot/worker``
    JSON ``{host, boot, pid, started}``: host name, kernel boot id, pid and the pid's start
    time (so a recycled pid is not mistaken for the run).
``blindspot/heartbeat``
    Unix time, refreshed every ``HEARTBEAT_S`` seconds while the run executes.

A run in progress is **dead** when it ran on this host (same host and boot) and its pid is gone
or belongs to another process, or when it ran elsewhere and its heartbeat is older than
``$BLINDSPOT_HEARTBEAT_STALE_S`` (300). A run without these tags (started by older code, or
killed before its executor started) is **unknown** and only freed on request (``--run``).
Finished runs that still hold slots are freed too (what run monitoring's
``free_slots_after_run_end_seconds`` does under ``dagster dev``).

Every run does this for the others when it starts, so a re-run after a crash needs no repair.
By hand::

    ./run slots                   # pools, who holds their slots, runs in progress: alive/dead
    ./run slots --free            # mark dead runs failed and free their slots
    ./run slots --free --run ID   # the same for one run, even one whose state is unknown
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

WORKER_TAG = "blindspot/worker"
HEARTBEAT_TAG = "blindspot/heartbeat"
HEARTBEAT_S = 30.0
STALE_ENV = "BLINDSPOT_HEARTBEAT_STALE_S"
FREE_COMMAND = "./run slots --free"
IN_PROGRESS = (
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The pid's start time in clock ticks since boot ("" where /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def worker_identity(pid: int | None = None) -> dict[str, object]:
    """Who runs a run: this host, boot, pid and the pid's start time."""
    pid = pid or os.getpid()
    return {
        "host": socket.gethostname(),
        "boot": _boot_id(),
        "pid": pid,
        "started": _process_start(pid),
    }


@dataclass(frozen=True)
class Liveness:
    state: str  # alive | dead | unknown
    why: str


def liveness(run: dg.DagsterRun, now: float | None = None) -> Liveness:
    """Whether the process of a run in progress still runs (see the module docstring)."""
    now = time.time() if now is None else now
    raw = run.tags.get(WORKER_TAG)
    if not raw:
        return Liveness("unknown", "no worker recorded (started by older code or killed early)")
    worker = json.loads(raw)
    pid, host = int(worker["pid"]), str(worker["host"])
    where = f"pid {pid} on {host}"
    here = worker_identity(os.getpid())
    if host == here["host"] and worker.get("boot", "") == here["boot"]:
        if not _pid_alive(pid):
            return Liveness("dead", f"{where} is gone (killed or crashed)")
        if worker.get("started") and _process_start(pid) not in ("", worker["started"]):
            return Liveness("dead", f"{where} is gone (the pid now belongs to another process)")
        return Liveness("alive", f"{where} is running")
    if host == here["host"]:
        return Liveness("dead", f"{where} ran before this host rebooted")
    stale = float(os.environ.get(STALE_ENV, "300"))
    beat = float(run.tags.get(HEARTBEAT_TAG, "0") or 0)
    age = now - beat
    if age > stale:
        return Liveness("dead", f"{where}: no heartbeat for {age:.0f} s (> {stale:.0f} s)")
    return Liveness("alive", f"{where}: heartbeat {age:.0f} s ago")


@dataclass(frozen=True)
class Holder:
    pool: str
    run_id: str
    step_key: str


def slot_holders(instance: dg.DagsterInstance) -> list[Holder]:
    """Every claimed slot of every pool: (pool, run id, step key)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys()))
    return [
        Holder(pool, slot.run_id, slot.step_key)
        for pool, info in sorted(infos.items())
        for slot in info.claimed_slots
    ]


@dataclass(frozen=True)
class Stale:
    run_id: str
    status: str
    why: str


def find_stale(
    instance: dg.DagsterInstance, exclude: Sequence[str] = (), run_ids: Sequence[str] = ()
) -> list[Stale]:
    """Runs in progress whose process is dead, and finished runs that still hold slots.
    ``run_ids`` narrows the search to those runs."""
    holding = {h.run_id for h in slot_holders(instance)}
    candidates = set(run_ids) if run_ids else holding
    records = instance.get_run_records(
        dg.RunsFilter(statuses=list(IN_PROGRESS), run_ids=list(run_ids) or None)
    )
    by_id = {r.dagster_run.run_id: r.dagster_run for r in records}
    if candidates - by_id.keys():
        others = instance.get_run_records(dg.RunsFilter(run_ids=list(candidates - by_id.keys())))
        by_id.update({r.dagster_run.run_id: r.dagster_run for r in others})
    stale = []
    for run_id, run in sorted(by_id.items()):
        if run_id in exclude:
            continue
        if run.status in IN_PROGRESS:
            live = liveness(run)
            if live.state == "dead":
                stale.append(Stale(run_id, run.status.value, live.why))
        elif run_id in holding:
            stale.append(Stale(run_id, run.status.value, f"ended {run.status.value}"))
    return stale


def release(
    instance: dg.DagsterInstance, run_id: str, why: str, by: str = FREE_COMMAND
) -> tuple[bool, int]:
    """Mark a run in progress failed (saying why and who did it) and free its slots; returns
    (whether it was marked failed, how many slots were freed)."""
    run = instance.get_run_by_id(run_id)
    failed = False
    if run is not None and run.status in IN_PROGRESS:
        instance.report_run_failed(
            run,
            f"Run worker lost: {why}. Marked failed by {by}, and its pool slots freed. "
            "Re-run the same command to resume: finished work is kept.",
        )
        failed = True
    held = sum(h.run_id == run_id for h in slot_holders(instance))
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return failed, held


def recover(
    instance: dg.DagsterInstance,
    exclude: Sequence[str] = (),
    by: str = FREE_COMMAND,
    log: Callable[[str], object] = print,
    run_ids: Sequence[str] = (),
) -> list[Stale]:
    """Release every stale run (see ``find_stale``), logging one line per run."""
    stale = find_stale(instance, exclude, run_ids)
    for s in stale:
        failed, freed = release(instance, s.run_id, s.why, by)
        action = "marked failed, " if failed else ""
        log(f"stale run {s.run_id} ({s.status}: {s.why}): {action}{freed} pool slot(s) freed")
    return stale


def describe(instance: dg.DagsterInstance) -> str:
    """Pools (limit, holders) and runs in progress with their liveness, as text."""
    storage = instance.event_log_storage
    lines = [f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '(ephemeral)')}"]
    pools = (
        sorted(storage.get_concurrency_keys()) if storage.supports_global_concurrency_limits else []
    )
    infos = storage.get_concurrency_infos(pools) if pools else {}
    if not pools:
        lines.append("pools: none used yet")
    for pool, info in infos.items():
        lines.append(f"pool {pool}: {len(info.claimed_slots)} / {info.slot_count} slot(s) in use")
        lines += [f"  held by run {s.run_id} step {s.step_key}" for s in info.claimed_slots]
        lines += [
            f"  waiting: run {p.run_id} step {p.step_key}"
            for p in info.pending_steps
            if p.assigned_timestamp is None
        ]
    runs = [
        r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=list(IN_PROGRESS)))
    ]
    lines.append(f"runs in progress: {len(runs)}")
    for run in runs:
        live = liveness(run)
        lines.append(f"  {run.run_id} {run.job_name} {run.status.value}: {live.state}, {live.why}")
    stale = find_stale(instance)
    if stale:
        lines.append(f"{len(stale)} stale run(s): free with `{FREE_COMMAND}`")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./run slots",
        description="Show the concurrency pools of $DAGSTER_HOME and the runs holding them; "
        "--free marks runs whose process is gone failed and frees their slots.",
    )
    parser.add_argument("--free", action="store_true", help="release stale runs")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="with --free: release this run even if its state is unknown (not if it is alive)",
    )
    args = parser.parse_args(argv)
    instance = dg.DagsterInstance.get()
    if not args.free:
        print(describe(instance))
        return 0
    released = recover(instance, by=FREE_COMMAND, run_ids=args.run)
    code = 0
    for run_id in set(args.run) - {s.run_id for s in released}:
        run = instance.get_run_by_id(run_id)
        if run is None:
            print(f"run {run_id}: no such run in this DAGSTER_HOME", file=sys.stderr)
            code = 1
        elif run.status in IN_PROGRESS and liveness(run).state == "alive":
            print(f"run {run_id}: {liveness(run).why}; not freed", file=sys.stderr)
            code = 1
        else:
            failed, freed = release(instance, run_id, "released by hand", FREE_COMMAND)
            print(f"run {run_id}: {'marked failed, ' if failed else ''}{freed} slot(s) freed")
    if not released and not args.run:
        print("nothing stale: every run in progress is alive, no ended run holds a slot")
    return code


if __name__ == "__main__":
    sys.exit(main())

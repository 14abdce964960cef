"""The executor of the code location, made safe after crashes (Dagster 1.13).

``with_crash_recovery(executor_def)`` wraps Dagster's default (multi-or-in-process) executor.
When a run's executor starts — in the ``dagster job execute`` / ``dagster asset materialize``
process, or in the run worker that ``dagster dev`` launches — it

1. records who runs it (``blindspot/worker`` tag) and keeps a heartbeat tag fresh
   (``defs/recovery.py``), so a later run can tell whether this one is still alive;
2. releases every stale run (``recovery.recover``): runs whose process is gone are marked failed
   with the reason, and their pool slots are freed — before this run claims any;
3. watches its steps' waits for a pool slot. A waiting step logs, at WARNING (INFO when a step
   of the same run holds the slot), which run and step hold the slot and the command that frees
   it, again every minute; a holder that dies meanwhile is released at once; after
   ``$BLINDSPOT_POOL_TIMEOUT_S`` (default 7200; run tag ``blindspot/pool_timeout_s``; 0 = no
   limit) of waiting on other runs the run fails with that message instead of waiting forever;
4. stops promptly on SIGINT/SIGTERM while waiting in process: Dagster's in-process loop only
   looks at a captured interrupt inside a step, so a run blocked on a pool ignored Ctrl-C.

The slot waits happen inside Dagster's ``InstanceConcurrencyContext.claim``, which each executor
constructs by name from its own module; the wrapper swaps in a subclass there for the duration
of the run (one run per process on every CLI and daemon path). If a Dagster upgrade moves
those names, the run still executes, without the watch, and says so in its log.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._utils.interrupts import pop_captured_interrupt

from blindspot_assets.defs import recovery

POOL_TIMEOUT_ENV = "BLINDSPOT_POOL_TIMEOUT_S"
POOL_TIMEOUT_TAG = "blindspot/pool_timeout_s"
DEFAULT_POOL_TIMEOUT_S = 7200.0
LOG_EVERY_S = 60.0
RECHECK_HOLDERS_S = 5.0
MAX_SLEEP_S = 0.5  # between slot claims: Dagster 1.13's loop spins without sleeping
# the executor modules whose ``InstanceConcurrencyContext`` the wrapper replaces
_EXECUTOR_MODULES = ("dagster._core.executor.in_process", "dagster._core.executor.multiprocess")


class PoolWaitTimeout(Exception):
    """A step waited longer than the pool timeout for a slot held by other runs."""


def pool_timeout(run: dg.DagsterRun) -> float:
    raw = run.tags.get(POOL_TIMEOUT_TAG) or os.environ.get(POOL_TIMEOUT_ENV) or ""
    return float(raw) if raw.strip() else DEFAULT_POOL_TIMEOUT_S


@dataclass
class _Wait:
    since: float
    next_log: float = 0.0
    next_check: float = 0.0
    logged: bool = False
    holders: list[recovery.Holder] = field(default_factory=list)


def _guarded_context(log: Any, run: dg.DagsterRun, interruptible: bool) -> type:
    timeout = pool_timeout(run)

    class GuardedConcurrencyContext(InstanceConcurrencyContext):
        def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun) -> None:
            super().__init__(instance, dagster_run)
            self._waits: dict[str, _Wait] = {}

        def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
            if super().claim(concurrency_key, step_key, step_priority):
                wait = self._waits.pop(step_key, None)
                if wait is not None and wait.logged:
                    log.info(
                        f"{step_key} got a slot of pool '{concurrency_key}' after "
                        f"{time.time() - wait.since:.0f} s"
                    )
                return True
            if interruptible and pop_captured_interrupt():
                raise DagsterExecutionInterruptedError(
                    f"interrupted while {step_key} waited for a slot of pool '{concurrency_key}'"
                )
            self._blocked(concurrency_key, step_key)
            return False

        def _blocked(self, pool: str, step_key: str) -> None:
            now = time.time()
            wait = self._waits.setdefault(step_key, _Wait(since=now))
            if now >= wait.next_check:
                wait.next_check = now + RECHECK_HOLDERS_S
                wait.holders = [h for h in recovery.slot_holders(self._instance) if h.pool == pool]
                others = sorted({h.run_id for h in wait.holders} - {self._run_id})
                if others and recovery.recover(
                    self._instance, run_ids=others, by=f"run {self._run_id}", log=log.warning
                ):
                    wait.next_log = 0.0
                    return  # the next claim takes the freed slot
                if len(others) < len({h.run_id for h in wait.holders}):
                    wait.since = now  # a step of this run holds it: not a wait on others
            others = sorted({h.run_id for h in wait.holders} - {self._run_id})
            waited = now - wait.since
            held_by = _describe(wait.holders, self._run_id)
            if timeout > 0 and others and waited > timeout:
                raise PoolWaitTimeout(
                    f"{step_key} waited {waited:.0f} s for a slot of pool '{pool}', held by "
                    f"{held_by} (limit {POOL_TIMEOUT_ENV}={timeout:.0f} s). If that run is not "
                    f"running any more, free its slots with `{recovery.FREE_COMMAND} --run "
                    f"{others[0]}`; then re-run."
                )
            if now >= wait.next_log:
                wait.next_log = now + LOG_EVERY_S
                wait.logged = True
                limit = f", failing after {timeout:.0f} s" if timeout > 0 and others else ""
                message = (
                    f"{step_key} is waiting for a slot of pool '{pool}' held by {held_by} "
                    f"({waited:.0f} s so far{limit}). "
                    f"`{recovery.FREE_COMMAND.removesuffix(' --free')}` shows who holds what; "
                    f"`{recovery.FREE_COMMAND}` frees the slots of runs whose process is gone."
                )
                (log.warning if others else log.info)(message)

        def interval_to_next_pending_claim_check(self) -> float:
            # Dagster returns min(0, ...) here, so its in-process loop polls the storage without
            # pausing; sleep until the next claim is due, at most MAX_SLEEP_S (stays responsive).
            if not self._pending_claims:
                return 0.0
            due = min(self._pending_timeouts.values(), default=0.0) - time.time()
            return max(0.0, min(MAX_SLEEP_S, due))

    return GuardedConcurrencyContext


def _describe(holders: list[recovery.Holder], own_run: str) -> str:
    if not holders:
        return "a step that just finished"
    return ", ".join(
        f"step {h.step_key} of {'this run' if h.run_id == own_run else 'run ' + h.run_id}"
        for h in holders
    )


@contextmanager
def _watch_pool_waits(log: Any, run: dg.DagsterRun, in_process: bool) -> Iterator[None]:
    import importlib

    modules = [importlib.import_module(m) for m in _EXECUTOR_MODULES]
    if not all(getattr(m, "InstanceConcurrencyContext", None) for m in modules):
        log.warning("pool waits are not watched: this Dagster version moved its claim loop")
        yield
        return
    saved = [m.InstanceConcurrencyContext for m in modules]
    guarded = _guarded_context(log, run, interruptible=in_process)
    for m in modules:
        vars(m)["InstanceConcurrencyContext"] = guarded
    try:
        yield
    finally:
        for m, original in zip(modules, saved, strict=True):
            vars(m)["InstanceConcurrencyContext"] = original


@contextmanager
def _heartbeat(instance: dg.DagsterInstance, run_id: str) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(recovery.HEARTBEAT_S):
            with suppress(Exception):  # a missed beat must never fail the run
                instance.add_run_tags(run_id, {recovery.HEARTBEAT_TAG: f"{time.time():.0f}"})

    thread = threading.Thread(target=beat, name="blindspot-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


class CrashSafeExecutor(dg.Executor):
    """Delegates to ``inner`` after recording the worker and releasing stale runs."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> Any:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        instance: dg.DagsterInstance = plan_context.instance
        run: dg.DagsterRun = plan_context.dagster_run
        log = plan_context.log
        worker = recovery.worker_identity()
        instance.add_run_tags(
            run.run_id,
            {
                recovery.WORKER_TAG: json.dumps(worker, sort_keys=True),
                recovery.HEARTBEAT_TAG: f"{time.time():.0f}",
            },
        )
        recovery.recover(instance, exclude=[run.run_id], by=f"run {run.run_id}", log=log.warning)
        in_process = type(self._inner).__name__ == "InProcessExecutor"
        with _heartbeat(instance, run.run_id), _watch_pool_waits(log, run, in_process):
            yield from self._inner.execute(plan_context, execution_plan)


def with_crash_recovery(executor_def: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """``executor_def`` (same name, config and requirements) wrapped in ``CrashSafeExecutor``.
    Only Dagster's own multi-or-in-process and in-process executors are wrapped; the others
    (Dask, Kubernetes) place steps themselves and are returned as they are."""
    if executor_def not in (dg.multi_or_in_process_executor, dg.in_process_executor):
        return executor_def

    make = executor_def.executor_creation_fn
    if make is None:
        raise ValueError(f"executor {executor_def.name} has no creation function to wrap")

    def create(init_context: dg.InitExecutorContext) -> dg.Executor:
        return CrashSafeExecutor(make(init_context))

    return dg.ExecutorDefinition(
        name=executor_def.name,
        config_schema=executor_def.config_schema.as_field(),
        requirements=executor_def.get_requirements,
        executor_creation_fn=create,
        description=executor_def.description,
    )

"""Where a run's pool timeout comes from: its run tag first, then the environment, then the
default (issue 29: a guard that ignored the tag passed every test)."""

from __future__ import annotations

import dagster as dg
import pytest

from blindspot_assets.defs import crash_guard


def _run(**tags: str) -> dg.DagsterRun:
    return dg.DagsterRun(job_name="blindspot_job", tags=tags)


def test_the_run_tag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLINDSPOT_POOL_TIMEOUT_S", "99")
    assert crash_guard.pool_timeout(_run(**{"blindspot/pool_timeout_s": "12"})) == 12.0
    assert crash_guard.pool_timeout(_run(**{"blindspot/pool_timeout_s": "0"})) == 0.0  # no limit
    assert crash_guard.pool_timeout(_run()) == 99.0


def test_without_tag_or_environment_the_default_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLINDSPOT_POOL_TIMEOUT_S", raising=False)
    assert crash_guard.pool_timeout(_run()) == 7200.0
    monkeypatch.setenv("BLINDSPOT_POOL_TIMEOUT_S", " ")
    assert crash_guard.pool_timeout(_run()) == 7200.0

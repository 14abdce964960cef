"""Crashes of the process a user runs, through the real CLI: SIGKILL of ``dagster job execute``
during each stage, of one step process under the multiprocess executor, two ``./run demo`` at
once, a full disk under Dagster. After each, the same command again completes, and what it made
equals one uninterrupted ``./run demo`` on the same tiny world (shared by the module)."""

from __future__ import annotations

import re
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from blindspot_assets.config import load_config
from blindspot_assets.defs import recovery
from blindspot_assets.sources.demo import fetch
from blindspot_assets.store.tables import query
from tests.conftest import REPO
from tests.faults.cli_runs import (
    IN_PROCESS,
    MODULE,
    WHOLE_GRAPH,
    CliRun,
    assert_same_outputs,
    cli_env,
    instance_at,
    outputs,
    step_events,
    tiny_world,
)

pytestmark = pytest.mark.slow


@dataclass
class Reference:
    config: Path
    home: Path
    data: Path
    outputs: dict[str, Any]
    run_id: str
    second_code: int
    second_output: str


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted ``./run demo`` on the tiny world, and a second ``./run demo`` started
    on the same DAGSTER_HOME while the first runs."""
    root = tmp_path_factory.mktemp("reference")
    config, home = tiny_world(root)
    env = cli_env(config, home, VENV=str(Path(sys.executable).parent.parent))
    first = CliRun(["demo"], env, exe=str(REPO / "run"))
    run_id = first.run_id()  # the lock is taken before dagster starts
    second = CliRun(["demo"], env, exe=str(REPO / "run"))
    second_code = second.finish(timeout=120)
    first.succeed()
    return Reference(
        config, home, root / "data", outputs(root / "data"), run_id, second_code, second.text
    )


def test_two_demos_at_once_on_one_home_the_second_refuses(reference: Reference) -> None:
    assert reference.second_code == 75, reference.second_output[-2000:]
    message = reference.second_output.splitlines()[-1]
    assert "demo.lock: pid" in message and "is running on this DAGSTER_HOME" in message
    assert "Wait for it to finish" in message
    runs = instance_at(reference.home).get_run_records()
    assert [r.dagster_run.run_id for r in runs] == [reference.run_id]  # no second run began
    assert runs[0].dagster_run.status.value == "SUCCESS"


# (step killed, a log line of that step showing it is mid-way, or None: killed as it starts)
STAGES = [
    ("generated_images.generated_images_shard_0", r"generate demo-a \[0\]: 8/32"),
    ("real_features.real_features_shard_0", r"features real \[0\]: 8/32"),
    ("sae", None),
    ("concept_stats", None),
]


def test_sigkill_during_each_stage_then_the_same_command_completes(
    tmp_path: Path, reference: Reference
) -> None:
    """Killed during generation, then (re-run) during feature extraction, SAE training and
    statistics: each re-run releases the dead run and gets past the stage it died in; the last
    one completes with the outputs of the uninterrupted run."""
    config, home = tiny_world(tmp_path)
    env = cli_env(config, home)
    killed = []
    for step, marker in STAGES:
        run = CliRun(WHOLE_GRAPH, env)
        run_id = run.run_id()
        if killed:  # the previous, killed run held the gpu slot: released before any step
            run.wait_for(rf"stale run {killed[-1]} \(STARTED: pid \d+ on .* is gone")
        run.wait_for_step(step)
        if marker:
            run.wait_for(marker)
        run.signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        assert "STEP_SUCCESS" not in step_events(home, run_id)[step], f"{step} ended before kill"
        killed.append(run_id)

    final = CliRun(WHOLE_GRAPH, env)
    final.succeed()
    instance = instance_at(home)
    for run_id in killed:
        run = instance.get_run_by_id(run_id)
        assert run.status.value == "FAILURE"
    (failure,) = instance.all_logs(killed[-1], of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "Run worker lost: pid" in failure.message
    assert "Re-run the same command to resume" in failure.message
    assert recovery.slot_holders(instance) == []
    assert_same_outputs(outputs(tmp_path / "data"), reference.outputs)


def test_sigkill_of_a_step_process_under_the_multiprocess_executor(
    tmp_path: Path, reference: Reference
) -> None:
    config, home = tiny_world(tmp_path)
    cfg = load_config(config)
    fetch(cfg.real, cfg.layout.real_images, cfg.seed)  # the real images, without a run
    env = cli_env(config, home)
    select = ["asset", "materialize", *MODULE, "--select", "real_features"]
    run = CliRun(select, env)  # the default executor: one process per step
    run_id = run.run_id()
    step_pid = run.wait_for_step("real_features.real_features_shard_0")
    assert step_pid != run.proc.pid
    run.wait_for(r"features real \[0\]: 8/32")
    run.signal(signal.SIGKILL, step_pid)
    assert run.finish() == 1
    assert re.search(r"child process for step real_features\.real_features_shard_0", run.text)
    instance = instance_at(home)
    assert instance.get_run_by_id(run_id).status.value == "FAILURE"
    assert recovery.slot_holders(instance) == []  # the failed step gave its slot back

    CliRun([*select, *IN_PROCESS], env).succeed()
    got = outputs(tmp_path / "data")
    real = {k: v for k, v in reference.outputs.items() if k.startswith("features/real.zarr")}
    assert real
    assert_same_outputs({k: got[k] for k in real}, real)


def test_disk_full_under_dagster_keeps_the_last_report_and_tables(
    tmp_path: Path, reference: Reference
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reference.data, data)
    raw = yaml.safe_load(reference.config.read_text())
    raw["data_root"] = str(data)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = tmp_path / "dagster_home"
    home.mkdir()
    page = data / "report" / "index.html"
    tables = sorted((data / "tables").rglob("*.parquet"))
    before = {p: p.read_bytes() for p in [page, *tables]}
    site = str(Path(__file__).parent / "disk_full_site")

    for kind, asset in [("report", "report"), ("parquet", "model_comparison")]:
        env = cli_env(config, home, BLINDSPOT_FAULT_DISK_FULL=kind)
        env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
        run = CliRun(["asset", "materialize", *MODULE, *IN_PROCESS, "--select", asset], env)
        assert run.finish() != 0
        assert "No space left on device" in run.text, run.text[-3000:]
        assert {p: p.read_bytes() for p in before} == before, kind
    images = re.findall(r'src="(img/[^"]+)"', page.read_text())
    assert images and all((page.parent / src).exists() for src in images)
    assert query(data / "blindspots.duckdb", "SELECT count(*) n FROM model_summaries")["n"][0] > 0
    assert not [p for p in (data / "tables").rglob("*") if p.name.endswith(".tmp")]

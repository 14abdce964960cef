"""`dagster dev` on loopback, driven through its GraphQL API: the asset graph with its groups and
model partitions, a materialisation of ``real_images`` launched and watched to success, and the
server stopped by PID (its own process group; bounded waits everywhere)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, demo_config_dict, write_config

DAGSTER = Path(sys.executable).with_name("dagster")

ASSETS_QUERY = """
{ assetNodes { assetKey { path } groupName isPartitioned partitionKeys description
               kinds owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } } } }
"""
LOCATION_QUERY = """
{ repositoriesOrError { __typename ... on RepositoryConnection {
    nodes { name location { name } } } ... on PythonError { message } } }
"""
LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""
RUN_QUERY = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status } ... on PythonError { message } } }
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM to the server's process group (webserver, daemon, code server), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def running_dagster_dev(
    config: Path, home: Path, log: Path, cwd: Path = REPO, **env: str
) -> Iterator[str]:
    """`dagster dev` of ``blindspot_assets.definitions`` (imported from ``cwd``) on loopback,
    up and serving its code location: its GraphQL URL; stopped by PID on exit."""
    port = _free_port()
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BLINDSPOT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        **env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(DAGSTER), "dev", "-m", "blindspot_assets.definitions",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped by PID with its children
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        wait_for_location(url, proc, log)
        yield url
    finally:
        _stop(proc)
        assert proc.poll() is not None, "dagster dev still running after SIGKILL"


def wait_for_location(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the server answers with a loaded repository (120 s at most)."""
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.post(url, json={"query": LOCATION_QUERY}, timeout=5)
            body = r.json()
            if r.status_code == 200 and body["data"]["repositoriesOrError"].get("nodes"):
                return
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"dagster dev not up in 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture
def dagster_dev(tmp_path) -> Iterator[tuple[str, Path, Path]]:
    """A running `dagster dev` on a tiny demo config: (GraphQL URL, data root, log file)."""
    config = write_config(tmp_path, demo_config_dict(tmp_path, n_images=12))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    log = tmp_path / "dagster-dev.log"
    with running_dagster_dev(config, home, log) as url:
        yield url, tmp_path / "data", log


def gql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    r = httpx.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_dagster_dev_graphql_lists_assets_and_materialises_real_images(dagster_dev):
    url, data_root, log = dagster_dev
    nodes = {tuple(n["assetKey"]["path"]): n for n in gql(url, ASSETS_QUERY)["assetNodes"]}
    groups = {n["groupName"] for n in nodes.values()}
    assert {"inputs", "generation", "features", "concepts", "analysis"} <= groups
    for key in ("real_images", "real_features", "sae", "concept_stats", "blindspots", "report"):
        assert (key,) in nodes, sorted(nodes)
        assert nodes[(key,)]["description"]
    gen = nodes[("generated_images",)]
    assert gen["isPartitioned"] and gen["partitionKeys"] == ["demo-a", "demo-b"]
    assert not nodes[("real_images",)]["isPartitioned"]

    run_id = launch(url, "__ASSET_JOB", assetSelection=[{"path": ["real_images"]}])
    status = wait_for_run(url, run_id, timeout_s=150)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{log.read_text()[-3000:]}"
    assert (data_root / "images" / "real" / "manifest.parquet").exists()


def launch(
    url: str,
    job: str,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    **selector: Any,
) -> str:
    """Launch ``job`` of the server's one repository; the run's id."""
    repo = gql(url, LOCATION_QUERY)["repositoriesOrError"]["nodes"][0]
    params = {
        "selector": {
            "repositoryLocationName": repo["location"]["name"],
            "repositoryName": repo["name"],
            "jobName": job,
            **selector,
        },
        "runConfigData": run_config or {},
        "mode": "default",
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    launched = gql(url, LAUNCH_MUTATION, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return str(launched["run"]["runId"])


def wait_for_run(url: str, run_id: str, timeout_s: float) -> str | None:
    """The run's final status, or its last one after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = gql(url, RUN_QUERY, {"runId": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    return status

"""Staleness that is true, as the UI shows it: a real `dagster dev` on a copy of the package and
a 32-image world, the whole graph materialised through GraphQL, then the config and the code
edited, the code location reloaded through GraphQL (``reloadRepositoryLocation``) and
``staleStatus`` / ``staleCauses`` read back after each edit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.faults.cli_runs import tiny_world
from tests.ui.test_dagster_webserver import (
    LOCATION_QUERY,
    gql,
    launch,
    running_dagster_dev,
    wait_for_run,
)

STALE_QUERY = """
query Stale($keys: [AssetKeyInput!], $partition: String) { assetNodes(assetKeys: $keys) {
  assetKey { path } staleStatus(partition: $partition)
  staleCauses(partition: $partition) { key { path } category reason } } }
"""
RELOAD_MUTATION = """
mutation Reload($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
  __typename ... on WorkspaceLocationEntry { locationOrLoadError { __typename
    ... on PythonError { message } } } ... on PythonError { message } } }
"""
UPSTREAM = {
    "real_images", "generated_images", "real_features", "gen_features", "sae",
    "real_concept_codes", "concept_codes",
}  # fmt: skip
# every asset that reads the `stats` block (written by hand, not taken from defs/versions.py)
STATS_READERS = {
    "concept_stats", "nuisance_probe", "blindspots", "concept_top_images", "datapoint_deltas",
    "memorization_candidates", "concept_labels", "concept_cooccurrence", "concept_map",
    "model_comparison", "blindspot_changes", "blindspot_verification", "report",
}  # fmt: skip
# and downstream of those: concept_names, which reads no statistic itself (each code version
# is folded with its ancestors', so the downstream has a new one too)
DOWNSTREAM = STATS_READERS | {"concept_names"}
# the assets that run stats/scores.py: every table asset reaches it through stats/run_tables.py
SCORES_RUNNERS = STATS_READERS


def _stale(url: str, partition: str) -> dict[str, tuple[str, frozenset[str]]]:
    """{asset: (staleStatus, the categories of the causes that name the asset itself)}, the
    partitioned ones at ``partition``."""
    nodes = gql(url, "{ assetNodes { assetKey { path } isPartitioned isMaterializable } }")
    keys: dict[bool, list[dict[str, list[str]]]] = {True: [], False: []}
    for node in nodes["assetNodes"]:
        if node["isMaterializable"]:
            keys[node["isPartitioned"]].append(node["assetKey"])
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for partitioned, of in keys.items():
        variables = {"keys": of, "partition": partition if partitioned else None}
        for node in gql(url, STALE_QUERY, variables)["assetNodes"]:
            name = "/".join(node["assetKey"]["path"])
            own = {c["category"] for c in node["staleCauses"] if c["key"]["path"] == [name]}
            out[name] = (node["staleStatus"], frozenset(own))
    return out


def _reload(url: str) -> None:
    location = gql(url, LOCATION_QUERY)["repositoriesOrError"]["nodes"][0]["location"]["name"]
    entry = gql(url, RELOAD_MUTATION, {"name": location})["reloadRepositoryLocation"]
    assert entry["__typename"] == "WorkspaceLocationEntry", entry
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded


def _stale_set(states: dict[str, tuple[str, frozenset[str]]]) -> set[str]:
    return {a for a, (status, _) in states.items() if status == "STALE"}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_config_and_code_edits_mark_exactly_what_they_change_stale(tmp_path):
    src = tmp_path / "src"  # a copy of the package: the test edits its code
    shutil.copytree(
        REPO / "blindspot_assets",
        src / "blindspot_assets",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    scores = src / "blindspot_assets" / "stats" / "scores.py"
    config, home = tiny_world(tmp_path / "world")
    log = tmp_path / "dagster-dev.log"
    with running_dagster_dev(config, home, log, cwd=src, PYTHONPATH=str(src)) as url:
        models = yaml.safe_load(config.read_text())["models"]
        models = list(models)
        run_id = launch(
            url,
            "blindspot_job",
            run_config={"execution": {"config": {"in_process": {}}}},
            tags={
                "dagster/asset_partition_range_start": models[0],
                "dagster/asset_partition_range_end": models[-1],
            },
        )
        status = wait_for_run(url, run_id, timeout_s=240)
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{log.read_text()[-4000:]}"
        fresh = _stale(url, models[0])
        assert _stale_set(fresh) == set(), fresh

        raw: dict[str, Any] = yaml.safe_load(config.read_text())
        assert raw["stats"]["temperature"] == 0.8
        raw["stats"]["temperature"] = 0.3
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        _reload(url)
        states = _stale(url, models[0])
        assert _stale_set(states) == DOWNSTREAM, states
        assert all(states[a][0] == "FRESH" for a in UPSTREAM), states
        assert {a for a, (_, own) in states.items() if "CODE" in own} == DOWNSTREAM

        raw["stats"]["temperature"] = 0.8  # back, and a docstring edit: nothing is stale
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        _edit(scores, '"""', '"""Reworded for the test. ')
        _reload(url)
        assert _stale(url, models[0]) == fresh

        scores.write_text(scores.read_text() + "\nEDITED_FOR_THE_TEST = 1\n")
        _reload(url)
        states = _stale(url, models[0])
        assert _stale_set(states) == SCORES_RUNNERS | {"concept_names"}, states
        assert all(states[a][0] == "FRESH" for a in UPSTREAM), states

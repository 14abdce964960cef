"""The extra asset checks, invoked directly on a small synthetic run: pass on good data, fail
(naming the model and the problem) on broken data."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from blindspot_assets.defs import checks
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae.checkpoint import SAE_SCHEMA
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import write_table_partition
from tests.report.synthetic_run import build_run


def _meta(result):
    return {k: getattr(v, "value", v) for k, v in result.metadata.items()}


@pytest.fixture
def run(tmp_path):
    cfg = build_run(tmp_path, n_images=16, n_concepts=12, tables="required")
    return cfg, RunConfigResource(config_path=str(cfg.source_path))


def test_checks_pass_on_good_data(run):
    cfg, res = run
    for check in (
        checks.gen_features_finite_and_shaped,
        checks.concept_stats_schema,
        checks.blindspots_schema,
    ):
        result = check(run_config=res)
        assert result.passed, _meta(result)
        assert _meta(result)["failing_models"] == []


def test_gen_features_check_names_the_broken_model(run):
    cfg, res = run
    store = RowStore.open(cfg.layout.features("demo-b"), mode="r+")
    tokens = np.asarray(store.array("tokens")[0:16])
    tokens[3, 0, 0] = np.nan
    store.array("tokens")[0:16] = tokens
    result = checks.gen_features_finite_and_shaped(run_config=res)
    meta = _meta(result)
    assert not result.passed and meta["failing_models"] == ["demo-b"]
    assert "1 valid rows with non-finite values" in meta["per_model"]["demo-b"]["problems"]


def test_table_checks_catch_schema_drift(run):
    cfg, res = run
    stats = pl.read_parquet(cfg.layout.tables / "concept_stats" / "demo-a.parquet")
    broken = stats.drop("q_value").with_columns(
        pl.col("delta") * 3, pl.col("concept").cast(pl.Utf8)
    )
    write_table_partition(cfg.layout.tables, "concept_stats", "demo-a", broken)
    flagged = pl.read_parquet(cfg.layout.tables / "blindspots" / "demo-b.parquet")
    write_table_partition(
        cfg.layout.tables, "blindspots", "demo-b",
        pl.concat([flagged, flagged.head(1).with_columns(kind=pl.lit("weird"))]),
    )  # fmt: skip
    stats_result = checks.concept_stats_schema(run_config=res)
    problems = _meta(stats_result)["per_model"]["demo-a"]["problems"]
    assert not stats_result.passed
    assert any("q_value" in p for p in problems) and "δ outside [0, 1]" in problems
    assert any(p.startswith("concept is") for p in problems)
    blind = _meta(checks.blindspots_schema(run_config=res))
    assert blind["failing_models"] == ["demo-b"]
    assert {"duplicate concept rows", "unknown kind values ['weird']"} <= set(
        blind["per_model"]["demo-b"]["problems"]
    )


def test_sae_check_reads_header_metrics(run):
    cfg, res = run
    assert not checks.sae_quality_in_bounds(run_config=res).passed  # no SAE yet: says so
    cfg.layout.sae.mkdir(parents=True)
    header = {
        "schema": SAE_SCHEMA,
        "data_version": "v1",
        "metrics": {"r2": 0.8, "dead_fraction": 0.1},
    }
    (cfg.layout.sae / "header.json").write_text(json.dumps(header))
    good = checks.sae_quality_in_bounds(run_config=res)
    assert good.passed and _meta(good)["r2"] == 0.8
    header["metrics"] = {"r2": 0.2, "dead_fraction": 0.9}
    (cfg.layout.sae / "header.json").write_text(json.dumps(header))
    bad = checks.sae_quality_in_bounds(run_config=res)
    assert not bad.passed and bad.severity.value == "WARN"
    assert len(_meta(bad)["problems"]) == 2


def test_checks_are_in_the_code_location():
    """definitions.py loads this module: every check is attached to its asset."""
    from blindspot_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    names = {
        (key.path[0], check.name)
        for key in graph.get_all_asset_keys()
        for check in graph.get(key).check_keys
    }
    assert {
        ("gen_features", "gen_features_finite_and_shaped"),
        ("sae", "sae_quality_in_bounds"),
        ("concept_stats", "concept_stats_schema"),
        ("blindspots", "blindspots_schema"),
    } <= names

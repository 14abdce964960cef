"""The blindspot gate end to end: the assets write blindspot_changes into a real DuckDB, and
``python -m blindspot_assets.gate`` (a subprocess, as CI runs it) exits 1 on a planted new
blindspot between two versions of a demo model, 0 on two identical generated sets, 2 when it
cannot decide."""

import polars as pl
import pytest

from blindspot_assets.config import ConfigError, load_config
from blindspot_assets.gate import main as gate_main
from blindspot_assets.store.tables import query
from tests.conftest import demo_config_dict, write_config
from tests.e2e.gate_runs import gate, materialize_with_checks

ASSETS = [
    "real_images", "real_features", "sae", "real_concept_codes", "generated_images",
    "gen_features", "concept_codes", "concept_stats", "blindspot_changes",
]  # fmt: skip
# registry order of the partitions (configs/demo.yaml): demo-a, demo-b, demo-a-v2, control-copy
RANGE = {
    "dagster/asset_partition_range_start": "demo-a",
    "dagster/asset_partition_range_end": "control-copy",
}


@pytest.fixture(scope="module")
def run_db(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("gate")
    raw = demo_config_dict(tmp, n_images=160)
    demo_a = raw["models"]["demo-a"]  # type: ignore[index]
    raw["models"] = {
        "demo-a": demo_a,
        # two generated sets that are the same images: each caption's own real image
        "demo-b": {"family": "control"},
        # demo-a's next version: the same plants, and it can no longer draw blue either
        "demo-a-v2": {**demo_a, "suppress_colors": ["red", "blue"]},
        "control-copy": {"family": "control"},
    }
    raw["stats"]["compare"] = [["demo-a", "demo-a-v2"], ["demo-b", "control-copy"]]  # type: ignore[index]
    path = write_config(tmp, raw)
    checks = materialize_with_checks(path, ASSETS, RANGE)
    return path, load_config(path), checks


def test_a_planted_new_blindspot_fails_the_gate(run_db) -> None:  # type: ignore[no-untyped-def]
    path, cfg, checks = run_db
    changes = query(cfg.layout.duckdb, "SELECT * FROM blindspot_changes")
    assert set(changes["comparison"]) == {"demo-a..demo-a-v2", "demo-b..control-copy"}
    new = changes.filter(
        (pl.col("comparison") == "demo-a..demo-a-v2") & (pl.col("status") == "new")
    )
    assert "suppressed" in new["kind"].to_list()
    assert checks.get("blindspot_changes_gate") is False  # the asset check fails too

    out = gate("demo-a", "demo-a-v2", "--config", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL" in out.stdout and "new" in out.stdout
    # nothing counts as a regression when nothing is asked for
    assert gate("demo-a", "demo-a-v2", "--config", str(path), "--fail-on", "").returncode == 0


def test_identical_generated_sets_pass_the_gate(run_db) -> None:  # type: ignore[no-untyped-def]
    path, cfg, _ = run_db
    rows = query(
        cfg.layout.duckdb,
        "SELECT * FROM blindspot_changes WHERE comparison = 'demo-b..control-copy'",
    )
    assert rows.height == cfg.sae.model.n_concepts
    assert set(rows["status"]) <= {"unchanged", "persisting"}
    assert rows["change"].abs().max() == 0.0
    out = gate("demo-b", "control-copy", "--db", str(cfg.layout.duckdb))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout


def test_the_gate_says_why_it_cannot_decide(run_db, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, cfg, _ = run_db
    db = str(cfg.layout.duckdb)
    cases = [
        (["demo-a", "sd15", "--db", db], "unknown model(s) ['sd15']"),
        (["demo-a-v2", "demo-a", "--db", db], "not computed"),  # not a configured comparison
        (["demo-a", "demo-a-v2", "--db", str(tmp_path / "none.duckdb")], "no results database"),
        (["demo-a", "demo-a-v2", "--config", str(path), "--fail-on", "new-blurred"], "--fail-on"),
    ]
    for args, message in cases:
        assert gate_main(args) == 2
        assert message in capsys.readouterr().err


def test_compare_is_validated_like_variant_pairs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = demo_config_dict(tmp_path)
    for bad, match in (
        ([["demo-a", "sd15"]], "stats.compare entry"),
        ([["demo-a", "demo-a"]], "two different registered models"),
        ("demo-a", "stats.compare must be a list"),
    ):
        raw["stats"]["compare"] = bad  # type: ignore[index]
        with pytest.raises(ConfigError, match=match):
            load_config(write_config(tmp_path, raw))
    raw["stats"].update(compare=[["demo-a", "demo-b"]], fail_on="worsened, new-blurred")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="stats.fail_on"):
        load_config(write_config(tmp_path, raw))

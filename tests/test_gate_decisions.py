"""The gate's decisions on a results database written here by hand (no pipeline run): a current
comparison is read, and one computed for model versions that are no longer the current ones is
refused as stale (exit 2) — the branch the end-to-end gate tests never reach (issue 29)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from blindspot_assets import gate


def _db(
    tmp_path: Path,
    current: dict[str, str],
    compared: tuple[str, str],
    pair: tuple[str, str] = ("a", "b"),
) -> Path:
    """concept_stats at the ``current`` model versions; blindspot_changes of ``pair`` computed
    at the versions ``compared``."""
    db = tmp_path / "results.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE concept_stats (model_key VARCHAR, model_version VARCHAR)")
    for model, version in current.items():
        con.execute("INSERT INTO concept_stats VALUES (?, ?)", [model, version])
    con.execute(
        "CREATE TABLE blindspot_changes (base VARCHAR, candidate VARCHAR, concept INTEGER, "
        "base_model_version VARCHAR, candidate_model_version VARCHAR)"
    )
    for concept in range(3):
        con.execute(
            "INSERT INTO blindspot_changes VALUES (?, ?, ?, ?, ?)", [*pair, concept, *compared]
        )
    con.close()
    return db


def test_a_current_comparison_is_read(tmp_path: Path) -> None:
    db = _db(tmp_path, {"a": "a:1", "b": "b:1"}, ("a:1", "b:1"))
    rows = gate.load_comparison(db, "a", "b")
    assert rows["concept"].to_list() == [0, 1, 2]


@pytest.mark.parametrize(
    ("compared", "stale_model"), [(("a:1", "b:0"), "b"), (("a:0", "b:1"), "a")]
)
def test_a_comparison_of_replaced_versions_is_stale(
    tmp_path: Path, compared: tuple[str, str], stale_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db(tmp_path, {"a": "a:1", "b": "b:1"}, compared)
    with pytest.raises(gate.GateError, match="is stale") as info:
        gate.load_comparison(db, "a", "b")
    assert f"['{stale_model}']" in str(info.value)
    assert gate.main(["a", "b", "--db", str(db)]) == gate.EXIT_USAGE
    assert "re-materialise blindspot_changes" in capsys.readouterr().err


def _archive(db: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE model_versions (version_key VARCHAR, model_key VARCHAR, "
        "model_version VARCHAR, status VARCHAR, archived_at VARCHAR)"
    )
    con.executemany("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?)", rows)
    con.close()


def test_previous_is_the_latest_complete_archive_at_its_own_version(tmp_path: Path) -> None:
    """``a@previous``: the newest complete archive of ``a`` (not a newer half-moved one, not
    another model's), checked against the version recorded for it in model_versions."""
    db = _db(tmp_path, {"a": "a:2"}, ("a:1", "a:2"), pair=("a@v1", "a"))
    _archive(
        db,
        [
            ("a@v0", "a", "a:0", "complete", "2026-01-01"),
            ("a@v1", "a", "a:1", "complete", "2026-02-01"),
            ("a@v9", "a", "a:9", "archiving", "2026-03-01"),
            ("z@v5", "z", "z:5", "complete", "2026-04-01"),
        ],
    )
    rows = gate.load_comparison(db, "a@previous", "a")
    assert set(rows["base"]) == {"a@v1"} and rows.height == 3
    assert gate.load_comparison(db, "a@v1", "a").height == 3
    with pytest.raises(gate.GateError, match="b has no archived version"):
        gate.load_comparison(db, "b@previous", "a")
    with pytest.raises(gate.GateError, match=r"unknown model\(s\) \['a@v9'\]"):
        gate.load_comparison(db, "a@v9", "a")


def test_an_archive_compared_at_another_version_is_stale(tmp_path: Path) -> None:
    db = _db(tmp_path, {"a": "a:2"}, ("a:0", "a:2"), pair=("a@v1", "a"))
    _archive(db, [("a@v1", "a", "a:1", "complete", "2026-02-01")])
    with pytest.raises(gate.GateError, match=r"stale: computed for \['a@v1'\] at \['a:0'\]"):
        gate.load_comparison(db, "a@previous", "a")


def _full_db(tmp_path: Path, labels: bool = True) -> Path:
    """A current comparison a..b with every column the gate prints: a new suppressed concept,
    a worsened one, an improved exaggerated one and an unchanged one; names for 0, 1 and 3."""
    db = _db(tmp_path, {"a": "a:1", "b": "b:1"}, ("a:1", "b:1"))
    changes = pl.DataFrame(
        [
            (0, "new", "suppressed", -0.0123, -0.5, -0.4877, -0.61, -0.37, 0.001),
            (1, "improved", "exaggerated", 0.4, 0.1, -0.3, -0.35, -0.25, 0.02),
            (2, "unchanged", None, 0.0, 0.0, 0.0, -0.01, 0.01, 0.9),
            (3, "worsened", "suppressed", -0.2, -0.4, -0.2, -0.25, -0.15, 0.0004),
        ],
        schema=["concept", "status", "kind", "base_delta_energy", "candidate_delta_energy"]
        + ["change", "change_ci_low", "change_ci_high", "change_q_value"],
        orient="row",
    ).with_columns(
        base=pl.lit("a"),
        candidate=pl.lit("b"),
        n_pairs=pl.lit(120),
        sae_version=pl.lit("sae:7"),
        base_model_version=pl.lit("a:1"),
        candidate_model_version=pl.lit("b:1"),
    )
    con = duckdb.connect(str(db))
    con.register("changes", changes.to_arrow())
    con.execute("CREATE OR REPLACE TABLE blindspot_changes AS SELECT * FROM changes")
    if labels:
        con.execute("CREATE TABLE concept_labels (concept INTEGER, term VARCHAR, rank INTEGER)")
        con.executemany(
            "INSERT INTO concept_labels VALUES (?, ?, ?)",
            [(0, "dog", 1), (0, "puppy", 2), (1, "red", 1), (3, "tree", 1)],
        )
    con.close()
    return db


# What the gate prints for _full_db, written out: counts of every status (zeros too) and of
# each status-kind that occurs; the changed concepts, regressions (!) first by q, then the rest.
HEAD = [
    "blindspot gate a → b (120 paired captions, sae sae:7)",
    "  base a:1",
    "  candidate b:1",
    "  new 1, resolved 0, worsened 1, improved 1, persisting 0, borderline 0, unchanged 1, "
    "new-suppressed 1, worsened-suppressed 1, improved-exaggerated 1",
    "  concept  status     kind          ΔE base   ΔE cand            change [95% CI]"
    "        q  name",
]
ROW_3 = "       3  worsened   suppressed       -0.2      -0.4        -0.2 [-0.25, -0.15]   0.0004  "
ROW_0 = "       0  new        suppressed    -0.0123      -0.5      -0.488 [-0.61, -0.37]    0.001  "
ROW_1 = "       1  improved   exaggerated       0.4       0.1        -0.3 [-0.35, -0.25]     0.02  "


def test_the_gate_prints_its_table_and_fails_on_the_default_regressions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _full_db(tmp_path)
    assert gate.main(["a", "b", "--db", str(db)]) == gate.EXIT_REGRESSION
    out = capsys.readouterr()
    fail = "FAIL: 2 regression(s) matching --fail-on new-suppressed,new-exaggerated,worsened"
    assert out.out.splitlines() == [*HEAD, f"!{ROW_3}tree", f"!{ROW_0}dog", f" {ROW_1}red", fail]
    assert out.err == ""


def test_the_gate_passes_on_other_tokens_and_cuts_the_table_at_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _full_db(tmp_path, labels=False)
    assert gate.main(["a", "b", "--db", str(db), "--fail-on", "resolved", "--rows", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[len(HEAD) :] == [
        f" {ROW_3}",
        "  … 2 more changed concepts",
        "PASS: no regression matching --fail-on resolved",
    ]
    assert gate.main(["a", "b", "--db", str(db), "--fail-on", "", "--rows", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(HEAD) + 4 and "more changed" not in lines[-2]
    assert lines[-1] == "PASS: no regression matching --fail-on (nothing)"
    assert gate.main(["a", "b", "--db", str(db), "--fail-on", "improved-exaggerated"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "FAIL: 1 regression(s) matching --fail-on improved-exaggerated"
    )


def test_the_gate_says_why_it_cannot_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.duckdb"
    assert gate.main(["a", "b", "--db", str(missing)]) == gate.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"blindspot gate: no results database at {missing}: run the pipeline first (./run demo)\n"
    )
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(gate.GateError, match=r"^.*empty.duckdb has no table this needs \(Cat"):
        gate.load_comparison(empty, "a", "b")
    with pytest.raises(gate.GateError) as no_table:
        gate.load_comparison(empty, "a", "b")
    assert str(no_table.value).endswith(
        "): materialise blindspot_changes (e.g. ./run demo, or the asset in the Dagster UI)"
    )
    db = _full_db(tmp_path)
    with pytest.raises(gate.GateError, match=r"^unknown model\(s\) \['c'\]: .* \['a', 'b'\]$"):
        gate.load_comparison(db, "a", "c")
    with pytest.raises(gate.GateError) as info:
        gate.load_comparison(db, "b", "a")
    assert str(info.value) == (
        "comparison b..a not computed: add [b, a] to stats.compare in the run config, and "
        "materialise blindspot_changes"
    )
    assert gate.main(["a", "b", "--db", str(db), "--fail-on", "bogus"]) == gate.EXIT_USAGE
    assert "--fail-on has unknown token(s) ['bogus']" in capsys.readouterr().err


def test_the_gate_says_how_to_call_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "240")
    with pytest.raises(SystemExit) as info:
        gate.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "usage: python -m blindspot_assets.gate [-h] [--fail-on FAIL_ON] [--config CONFIG] "
        "[--db DB] [--rows ROWS] base candidate\n"
    )
    for line in (
        "Fail when CANDIDATE has blindspot regressions against BASE (table blindspot_changes).",
        "  --fail-on FAIL_ON  comma-separated statuses, optionally with a kind (default: the run "
        "config's stats.fail_on: new-suppressed,new-exaggerated,worsened)",
        "  --config CONFIG    run config YAML (default: $BLINDSPOT_CONFIG or demo)",
        "  --db DB            results DuckDB (default: the run config's)",
        "  --rows ROWS        changed concepts to print",
    ):
        assert line in out.splitlines()


def test_the_run_config_gives_the_database_and_fail_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --db the run config's database is read, with its stats.fail_on; with both
    the config's fail_on applies to the other database; --fail-on wins over both."""
    db = _full_db(tmp_path)
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo.yaml").read_text())
    raw["data_root"] = str(tmp_path / "data")
    raw["stats"]["fail_on"] = "improved"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert gate.main(["a", "b", "--config", str(config)]) == gate.EXIT_USAGE
    assert f"no results database at {tmp_path / 'data'}" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    shutil.copy(db, tmp_path / "data" / "blindspots.duckdb")
    for argv in (["--config", str(config)], ["--config", str(config), "--db", str(db)]):
        assert gate.main(["a", "b", *argv]) == gate.EXIT_REGRESSION
        assert capsys.readouterr().out.splitlines()[-1] == (
            "FAIL: 1 regression(s) matching --fail-on improved"
        )
    assert gate.main(["a", "b", "--config", str(config), "--fail-on", "resolved"]) == 0


def test_twenty_changed_concepts_are_printed_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _full_db(tmp_path)
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO blindspot_changes SELECT c.* REPLACE (c.concept + 10 * r.i AS concept) "
        "FROM blindspot_changes c, range(1, 8) r(i)"
    )  # 32 concepts, 24 of them changed
    con.execute("ALTER TABLE blindspot_changes DROP COLUMN sae_version")  # an older table
    con.close()
    gate.main(["a", "b", "--db", str(db)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(HEAD) + 20 + 2 and lines[-2] == "  … 4 more changed concepts"
    assert lines[0] == "blindspot gate a → b (120 paired captions, sae ?)"

"""The gate's decisions on a results database written here by hand (no pipeline run): a current
comparison is read, and one computed for model versions that are no longer the current ones is
refused as stale (exit 2) — the branch the end-to-end gate tests never reach (issue 29)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

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

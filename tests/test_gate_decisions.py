"""The gate's decisions on a results database written here by hand (no pipeline run): a current
comparison is read, and one computed for model versions that are no longer the current ones is
refused as stale (exit 2) — the branch the end-to-end gate tests never reach (issue 29)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from blindspot_assets import gate


def _db(tmp_path: Path, current: dict[str, str], compared: tuple[str, str]) -> Path:
    """concept_stats at the ``current`` model versions; blindspot_changes of a..b computed at
    the versions ``compared``."""
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
            "INSERT INTO blindspot_changes VALUES ('a', 'b', ?, ?, ?)", [concept, *compared]
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

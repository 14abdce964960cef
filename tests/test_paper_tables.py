"""paper_tables prints our δ skewness and correlations beside the paper's, from a run's DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from blindspot_assets.paper_tables import main


def test_prints_ours_beside_the_papers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "run.duckdb"
    con = duckdb.connect(str(db))
    con.sql("CREATE TABLE model_summaries (model VARCHAR, delta_skewness DOUBLE)")
    con.sql("INSERT INTO model_summaries VALUES ('sd15', -0.31), ('sd21', -0.5), ('kd', -0.2)")
    con.sql("CREATE TABLE model_correlations (model_a VARCHAR, model_b VARCHAR, pearson_r DOUBLE)")
    con.sql("INSERT INTO model_correlations VALUES ('sd21', 'sd15', 0.77), ('sd15', 'kd', 0.5)")
    con.close()
    assert main([str(db), "--model", "Kandinsky 2.1=kd"]) == 0
    out = capsys.readouterr().out.splitlines()
    skew = [line.split()[-2:] for line in out[2:6]]  # SD 2.1, SD 1.5, PixArt, Kandinsky
    assert skew == [["-0.50", "-0.54"], ["-0.31", "-0.40"], ["—", "-0.40"], ["-0.20", "-0.23"]]
    pearson = out[out.index("Pearson r of relative differences, SD 1.5 vs") + 2 :]
    assert pearson[0].split()[-2:] == ["+0.77", "+0.82"]  # SD 2.1, either order of the pair
    assert pearson[1].split()[-2:] == ["—", "+0.41"]  # PixArt not run
    assert pearson[2].split()[-2:] == ["+0.50", "+0.46"]  # Kandinsky via --model
    assert main([str(tmp_path / "missing.duckdb")]) == 2

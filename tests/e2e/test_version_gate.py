"""A model compared with its own earlier version, end to end: when demo-a's settings (its
"checkpoint") change, re-materialising archives the old version's images, features, codes and
table rows under ``demo-a@<version>`` instead of reusing them, ``blindspot_changes`` compares
the new version with it (paired per caption), and ``python -m blindspot_assets.gate
demo-a@previous demo-a`` exits 0 on a version that draws the same (the control) and 1 on a
version that lost a colour (the planted regression)."""

from pathlib import Path

import polars as pl
import pytest

from blindspot_assets.config import load_config
from blindspot_assets.store import versions
from blindspot_assets.store.tables import query, read_table
from tests.conftest import demo_config_dict, write_config
from tests.e2e.gate_runs import gate, materialize_with_checks

REAL_SIDE = ["real_images", "real_features", "sae", "real_concept_codes"]
MODEL_SIDE = [
    "generated_images", "gen_features", "concept_codes", "concept_stats", "blindspot_changes",
]  # fmt: skip
ONE_MODEL = {
    "dagster/asset_partition_range_start": "demo-a",
    "dagster/asset_partition_range_end": "demo-a",
}

pytestmark = pytest.mark.slow


def test_a_model_is_gated_against_the_version_it_replaced(tmp_path: Path) -> None:
    raw = demo_config_dict(tmp_path, n_images=160)
    raw["models"] = {"demo-a": raw["models"]["demo-a"]}  # type: ignore[index]
    path = write_config(tmp_path, raw)
    materialize_with_checks(path, REAL_SIDE + MODEL_SIDE, ONE_MODEL)
    cfg = load_config(path)
    first_image = sorted(cfg.layout.generated_images("demo-a").glob("*.png"))[0].read_bytes()
    assert versions.archived_versions(cfg.layout, "demo-a") == []  # nothing replaced yet

    # v2, the control: a new version that draws exactly as before (only its label moved)
    raw["models"]["demo-a"] = {**raw["models"]["demo-a"], "version": "2"}  # type: ignore[index]
    write_config(tmp_path, raw)
    checks = materialize_with_checks(path, MODEL_SIDE, ONE_MODEL)
    (v1,) = versions.archived_versions(cfg.layout, "demo-a")
    assert v1.status == "complete" and {"images", "features", "codes"} <= set(v1.moved)
    archived = versions.locate(cfg.layout, v1.key).generated_images(v1.key)
    assert sorted(archived.glob("*.png"))[0].read_bytes() == first_image
    assert checks["blindspot_changes_gate"] is True
    out = gate("demo-a@previous", "demo-a", "--config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout
    control = read_table(cfg.layout.tables, "blindspot_changes", f"{v1.key}..demo-a")
    assert control["change"].abs().max() == 0.0  # paired per caption: the same images cancel

    # v3, the planted regression: the same plants, and it can no longer draw blue either
    raw["models"]["demo-a"] = {  # type: ignore[index]
        **raw["models"]["demo-a"],  # type: ignore[index]
        "version": "3",
        "suppress_colors": [*raw["models"]["demo-a"]["suppress_colors"], "blue"],  # type: ignore[index]
    }
    write_config(tmp_path, raw)
    checks = materialize_with_checks(path, MODEL_SIDE, ONE_MODEL)
    v1_again, v2 = versions.archived_versions(cfg.layout, "demo-a")
    assert v1_again.key == v1.key and v2.key != v1.key
    assert checks["blindspot_changes_gate"] is False
    changes = query(cfg.layout.duckdb, "SELECT * FROM blindspot_changes")
    # the comparison with v1 was archived with v2: only the current one is in the views
    assert set(changes["comparison"]) == {f"{v2.key}..demo-a"}
    new = changes.filter(pl.col("status") == "new")
    assert "suppressed" in new["kind"].to_list()
    out = gate("demo-a@previous", "demo-a", "--config", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL" in out.stdout and v2.key in out.stdout
    # an older version is still there to look at, but its comparison went into the archive
    # with v2: the gate finds it not computed (a stale comparison is tests/test_gate_decisions.py)
    not_computed = gate(v1.key, "demo-a", "--config", str(path))
    assert not_computed.returncode == 2 and "not computed" in not_computed.stderr
    assert "compared with the version it replaced only (MODEL@previous)" in not_computed.stderr

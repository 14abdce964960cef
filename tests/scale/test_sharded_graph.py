"""The whole graph with its per-image stages fanned out over shards (one Dagster step per shard)
equals the graph run with one shard: same images, same Zarr stores, same statistics."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from blindspot_assets.config import load_config
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import query
from tests.conftest import demo_config_dict, write_config
from tests.e2e.test_demo import RANGE_TAGS

SHARDED_STEPS = ("generated_images", "real_features", "gen_features", "concept_codes")


def _config(tmp_path: Path, name: str, shards: int) -> Path:
    raw = demo_config_dict(tmp_path, n_images=300, sae={"epochs": 2}, scale={"shards": shards})
    raw["data_root"] = str(tmp_path / name)  # both runs use the same tiny encoder
    (tmp_path / name).mkdir()
    return write_config(tmp_path / name, raw)


def _stats(db: Path) -> list[tuple[object, ...]]:
    return query(
        db,
        "SELECT model_key, concept, n_pairs, energy_real, energy_gen, delta, delta_ci_low, "
        "delta_ci_high, p_value, q_value FROM concept_stats ORDER BY model_key, concept",
    ).rows()


def _run_in_code_location(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> dg.ExecuteInProcessResult:
    """Load the code location under ``BLINDSPOT_CONFIG=config`` (the shard count is read at
    load, like the partitions) and run the whole graph over both models in process."""
    monkeypatch.setenv("BLINDSPOT_CONFIG", str(config))
    for name in [n for n in sys.modules if n.startswith("blindspot_assets.def")]:
        monkeypatch.delitem(sys.modules, name)
    defs = importlib.import_module("blindspot_assets.definitions").defs
    from blindspot_assets.defs.resources import RunConfigResource

    return defs.resolve_job_def("blindspot_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags=RANGE_TAGS,
        resources={"run_config": RunConfigResource(config_path=str(config))},
    )


@pytest.mark.slow
def test_sharded_graph_equals_the_one_shard_graph(tmp_path, monkeypatch):
    one = load_config(_config(tmp_path, "one", 1))
    four = load_config(_config(tmp_path, "four", 4))
    assert _run_in_code_location(one.source_path, monkeypatch).success
    result = _run_in_code_location(four.source_path, monkeypatch)
    assert result.success

    steps = {e.step_key for e in result.all_events if e.step_key}
    for asset in SHARDED_STEPS:
        assert {s for s in steps if s.startswith(f"{asset}.{asset}_shard_")} == {
            f"{asset}.{asset}_shard_{i}" for i in range(4)
        }
    assert "real_concept_codes.real_concept_codes_shard_3" in steps
    # every shard step did work: 300 images make 4 ranges of whole 32-row chunks
    n_shards = {
        e.materialization.asset_key.path[0]: e.materialization.metadata["n_shards"].value
        for e in result.get_asset_materialization_events()
        if "n_shards" in e.materialization.metadata
    }
    assert n_shards == dict.fromkeys([*SHARDED_STEPS, "real_concept_codes"], 4)

    for model in one.models:
        a, b = one.layout.generated_images(model), four.layout.generated_images(model)
        pngs = sorted(p.name for p in a.glob("*.png"))
        assert pngs == sorted(p.name for p in b.glob("*.png")) and len(pngs) > 250
        assert all((a / n).read_bytes() == (b / n).read_bytes() for n in pngs)
        assert not (b / "manifest.parts").exists()  # joined into the manifest
    for dataset in ["real", *one.models]:
        for kind, array in (("features", "tokens"), ("codes", "xi")):
            x = RowStore.open(getattr(one.layout, kind)(dataset))
            y = RowStore.open(getattr(four.layout, kind)(dataset))
            assert y.is_complete() and y.attrs.get("completed_at")
            assert x.image_ids() == y.image_ids() and x.status() == y.status()
            np.testing.assert_array_equal(x.array(array)[:], y.array(array)[:])
    assert _stats(one.layout.duckdb) == _stats(four.layout.duckdb)
    assert len(_stats(four.layout.duckdb)) > 0

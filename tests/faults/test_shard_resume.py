"""A shard step that dies mid-run: the asset is not materialised (the merge never claims a
store with pending rows), the other shards' rows stay done, and the re-run computes only the
dead shard's rows, ending with the same store as an uninterrupted run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from blindspot_assets.config import load_config
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict, write_config


def _load_code_location(config: Path, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.setenv("BLINDSPOT_CONFIG", str(config))
    for name in [n for n in sys.modules if n.startswith("blindspot_assets.def")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("blindspot_assets.definitions").defs


def _run_real_job(defs: dg.Definitions, config: Path) -> dg.ExecuteInProcessResult:
    from blindspot_assets.defs.resources import RunConfigResource

    return defs.resolve_job_def("real_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"run_config": RunConfigResource(config_path=str(config))},
        raise_on_error=False,
    )


@pytest.mark.slow
def test_a_dead_shard_is_resumed_alone(tmp_path, monkeypatch):
    raw = demo_config_dict(tmp_path, n_images=300, scale={"shards": 3})
    config = write_config(tmp_path, raw)
    cfg = load_config(config)
    defs = _load_code_location(config, monkeypatch)
    features = importlib.import_module("blindspot_assets.defs.features")
    real_extract = features.extract_features
    shard_1: list[tuple[int, int]] = []

    def dies_on_shard_1(*args, rows=None, **kwargs):
        if rows is not None and rows[0] > 0 and rows[1] < 300:
            shard_1.append(rows)
            real_extract(*args, rows=(rows[0], rows[0] + 32), **kwargs)  # one block done
            raise RuntimeError("the worker of shard 1 was lost")
        return real_extract(*args, rows=rows, **kwargs)

    monkeypatch.setattr(features, "extract_features", dies_on_shard_1)
    first = _run_real_job(defs, config)
    assert not first.success
    failed = {e.step_key for e in first.all_events if e.is_step_failure}
    assert failed == {"real_features.real_features_shard_1"}
    materialized = {e.asset_key.path[0] for e in first.get_asset_materialization_events()}
    assert "real_images" in materialized and "real_features" not in materialized
    (rows,) = shard_1
    store = RowStore.open(cfg.layout.features("real"))
    assert not store.is_complete() and not store.attrs.get("completed_at")
    pending = store.pending_blocks()
    assert pending[0][0] == rows[0] + 32 and pending[-1][1] == rows[1]

    monkeypatch.setattr(features, "extract_features", real_extract)
    second = _run_real_job(defs, config)
    assert second.success
    (mat,) = [
        e.materialization
        for e in second.get_asset_materialization_events()
        if e.materialization.asset_key.path[0] == "real_features"
    ]
    assert mat.metadata["n_computed"].value == rows[1] - rows[0] - 32  # only what was pending
    assert mat.metadata["n_shards"].value == 3

    # the same store as one uninterrupted pass
    from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
    from blindspot_assets.store.images import read_manifest

    ref = tmp_path / "ref.zarr"
    extract_features(
        load_encoder(cfg.encoder),
        read_manifest(cfg.layout.real_images),
        cfg.layout.real_images,
        ref,
    )
    done = RowStore.open(cfg.layout.features("real"))
    assert done.is_complete() and done.attrs.get("completed_at")
    np.testing.assert_array_equal(done.array("tokens")[:], RowStore.open(ref).array("tokens")[:])
    assert done.status() == RowStore.open(ref).status()

"""A backfill over two model partitions on Dask (dagster-dask): two runs at once, each on its
own LocalCluster worker process, with the per-image stages fanned out over two shard steps,
producing the same tables as the in-process executor with one shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import dagster_dask  # noqa: F401 - the [dev] extra: a missing one fails here, never skips
import pytest
from polars.testing import assert_frame_equal

from blindspot_assets.config import load_config
from blindspot_assets.definitions import defs
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.store.tables import read_table
from tests.conftest import REPO, demo_config_dict, write_config

DAGSTER = str(Path(sys.executable).parent / "dagster")
MODELS = ("demo-a", "demo-b")
TABLES = ("concept_stats", "blindspots", "datapoint_deltas", "memorization_candidates")


def _config(tmp_path: Path, name: str, shards: int = 1) -> Path:
    raw = demo_config_dict(tmp_path, n_images=48, scale={"shards": shards})
    raw["data_root"] = str(tmp_path / name)
    raw["sae"].update({"n_concepts": 32, "n_candidates": 64, "epochs": 1})
    raw["stats"].update({"n_bootstrap": 30, "n_permutations": 30})
    path = tmp_path / f"{name}.yaml"
    path.write_text(write_config(tmp_path, raw).read_text())
    return path


@pytest.mark.slow
def test_dask_backfill_matches_the_in_process_tables(tmp_path):
    reference = _config(tmp_path, "reference")
    # the real side once (images → features → SAE → real codes), then a copy for the Dask runs
    resources = {"run_config": RunConfigResource(config_path=str(reference))}
    real = defs.resolve_job_def("real_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), resources=resources
    )
    assert real.success
    on_dask = _config(tmp_path, "dask", shards=2)  # 48 images: two shards of 32 + 16 rows
    shutil.copytree(tmp_path / "reference", tmp_path / "dask")

    home = tmp_path / "dagster_home"  # Dask needs a persistent instance
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)):
        pass  # create its storage once: two CLIs starting at once would race on the schema
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BLINDSPOT_CONFIG": str(on_dask),
        "BLINDSPOT_EXECUTOR": "dask",
        "BLINDSPOT_DASK_WORKERS": "1",  # one worker process per run; the two runs in parallel
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    t0 = time.monotonic()
    procs = {
        model: subprocess.Popen(
            [
                DAGSTER,
                "job",
                "execute",
                "-m",
                "tests.scale.dask_location",
                "-j",
                "model_job",
                "--tags",
                json.dumps({"dagster/partition": model}),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for model in MODELS
    }
    logs = {m: p.communicate(timeout=400)[0] for m, p in procs.items()}
    for model, proc in procs.items():
        assert proc.returncode == 0, logs[model][-4000:]
    dask_seconds = time.monotonic() - t0

    # the same backfill with the in-process executor
    for model in MODELS:
        result = defs.resolve_job_def("model_job").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), resources=resources, partition_key=model
        )
        assert result.success

    ref_cfg, dask_cfg = load_config(reference), load_config(on_dask)
    for table in TABLES:
        for model in MODELS:
            want = read_table(ref_cfg.layout.tables, table, model).drop("run_id")
            got = read_table(dask_cfg.layout.tables, table, model).drop("run_id")
            assert want.height > 0 or table == "memorization_candidates", (table, model)
            # Memorisation distances come from small float GEMMs, whose last bits depend on the
            # thread count (a Dask worker runs torch on 1 thread, this process on 2; measured:
            # float32 cosines carry ~1e-7 absolute noise, float64 small GEMMs vary too): the
            # rest of this table, and every other table, must match exactly.
            # (rows are sorted by distance: near ties may swap, so compare them by image)
            if table == "memorization_candidates":
                got, want = got.sort("gen_image_id"), want.sort("gen_image_id")
                assert_frame_equal(got, want, rel_tol=1e-5, abs_tol=1e-5)
            else:
                # `specific` tests a model against the other models' codes that exist when its
                # partition runs: in a per-model backfill that depends on the runs' order (the
                # two Dask runs overlap; the in-process ones do not). Dagster marks blindspots
                # stale when another model's codes land (its dependency on every partition of
                # concept_codes): re-materialise it after the backfill. The rest must match.
                if table == "blindspots":
                    order_dependent = [c for c in got.columns if c.startswith("specific")]
                    got, want = got.drop(order_dependent), want.drop(order_dependent)
                assert_frame_equal(got, want, check_exact=True)

    # the two runs executed on Dask and overlapped in time (parallel workers)
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        spans = []
        for run in runs:
            stats = instance.get_run_step_stats(run.run_id)
            keys = {s.step_key for s in stats}
            assert keys >= {"concept_stats", "generated_images.generated_images_merge"}
            for stage in ("generated_images", "gen_features", "concept_codes"):
                assert {f"{stage}.{stage}_shard_0", f"{stage}.{stage}_shard_1"} <= keys
            spans.append((min(s.start_time for s in stats), max(s.end_time for s in stats)))
            # every step ran in a Dask worker process, not in the run's own process
            run_pid = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)[0]
            step_pids = {
                e.dagster_event.pid
                for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
            }
            assert run_pid.dagster_event.pid not in step_pids
        (a0, a1), (b0, b1) = spans
        assert a0 < b1 and b0 < a1, f"the two runs did not overlap: {spans}"
    print(f"two model partitions on Dask in {dask_seconds:.1f} s")

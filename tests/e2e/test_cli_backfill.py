"""From the CLI, as a user runs it: the real side once, then a backfill over two model
partitions — a tiny diffusers pipeline loaded by path and a folder of pre-generated images."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from blindspot_assets.config import load_config
from blindspot_assets.store.images import read_lineage, read_manifest
from blindspot_assets.store.tables import query
from tests.conftest import demo_config_dict, write_config
from tests.tiny_models import save_tiny_sd

DAGSTER = str(Path(sys.executable).parent / "dagster")


def _dagster(args, env):
    proc = subprocess.run([DAGSTER, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_backfill_over_a_diffusers_model_and_a_pregenerated_folder(tmp_path):
    sd_dir = save_tiny_sd(tmp_path / "tiny-sd")
    pregen = tmp_path / "pregen"
    raw = demo_config_dict(tmp_path, n_images=12)
    raw["models"] = {
        "tiny-sd": {
            "family": "stable_diffusion",
            "repo": str(sd_dir),
            "steps": 2,
            "height": 32,
            "width": 32,
            "batch_size": 4,
            "dtype": "float32",
        },
        "pregen": {"family": "pregenerated", "path": str(pregen), "model": "made elsewhere"},
    }
    raw["sae"].update({"n_concepts": 32, "n_candidates": 64, "epochs": 1})
    raw["stats"].update({"n_bootstrap": 50, "n_permutations": 50})
    config = write_config(tmp_path, raw)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BLINDSPOT_CONFIG": str(config),
        "HF_HUB_OFFLINE": "1",
    }
    # In-process execution: steps share one interpreter instead of re-importing torch each.
    repo = Path(__file__).resolve().parents[2]
    module = ["-m", "blindspot_assets.definitions", "-c", str(repo / "configs/in_process.yaml")]

    _dagster(["job", "execute", *module, "-j", "real_job"], env)
    cfg = load_config(config)
    # The pre-generated folder: images made elsewhere, named by the real image ids.
    pregen.mkdir()
    for image_id in read_manifest(cfg.layout.real_images)["image_id"]:
        Image.new("RGB", (40, 40), (200, 30, 30)).save(pregen / f"{image_id}.png")

    # One run over the range of model partitions ...
    _dagster(
        [
            "job",
            "execute",
            *module,
            "-j",
            "model_job",
            "--tags",
            json.dumps(
                {
                    "dagster/asset_partition_range_start": "tiny-sd",
                    "dagster/asset_partition_range_end": "pregen",
                }
            ),
        ],
        env,
    )
    # ... and the same models through `dagster asset materialize --partition-range`.
    _dagster(
        [
            "asset",
            "materialize",
            *module,
            "--select",
            "generated_images,gen_features",
            "--partition-range",
            "tiny-sd...pregen",
        ],
        env,
    )
    _dagster(["job", "execute", *module, "-j", "report_job"], env)

    for model_key in ("tiny-sd", "pregen"):
        gen = read_manifest(cfg.layout.generated_images(model_key))
        assert gen.height == 12
        assert (gen["status"] == "ok").all()
    lineage = read_lineage(cfg.layout.generated_images("tiny-sd"))
    assert lineage["steps"] == 2
    rows = query(
        cfg.layout.duckdb,
        "SELECT model_key, count(*) n, min(model_version) v "
        "FROM concept_stats GROUP BY 1 ORDER BY 1",
    )
    assert rows["model_key"].to_list() == ["pregen", "tiny-sd"]
    assert all(v.startswith("sha256:") for v in rows["v"])  # local dirs: content hashes
    assert (cfg.layout.report / "index.html").exists()

"""The whole graph on the demo world, in process: planted blindspots must be found."""

import json

import dagster as dg
import polars as pl
import pytest

from blindspot_assets.config import load_config
from blindspot_assets.definitions import defs
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.store.images import read_lineage, read_manifest
from blindspot_assets.store.tables import query
from tests.conftest import demo_config_dict, write_config

RANGE_TAGS = {
    "dagster/asset_partition_range_start": "demo-a",
    "dagster/asset_partition_range_end": "demo-b",
}


def run_whole_graph(config_path, instance=None):
    job = defs.resolve_job_def("blindspot_job")
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=RANGE_TAGS,
        resources={"run_config": RunConfigResource(config_path=str(config_path))},
    )


def planted_hits(cfg, model_key, kind, word, verdict="true", top_n=20, min_share=0.7):
    """Concepts flagged ``kind`` (by ``verdict``) whose top-20 real images mostly show ``word``."""
    attrs = read_manifest(cfg.layout.real_images).select(
        "image_id",
        pl.col("attributes")
        .map_elements(
            lambda a: sorted(
                {*json.loads(a)["colors"], *json.loads(a)["shapes"], json.loads(a)["background"]}
            ),
            return_dtype=pl.List(pl.String),
        )
        .alias("words"),
    )
    flagged = query(
        cfg.layout.duckdb,
        f"SELECT concept FROM blindspots WHERE model_key = '{model_key}' AND kind = '{kind}' "
        f"AND {verdict}",
    )["concept"].to_list()
    top = query(
        cfg.layout.duckdb,
        f"SELECT concept, image_id FROM concept_top_images WHERE dataset = 'real' "
        f"AND rank <= {top_n}",
    ).join(attrs, on="image_id")
    hits = []
    for concept in flagged:
        rows = top.filter(pl.col("concept") == concept)
        if rows.height >= top_n // 2:
            share = rows["words"].list.contains(word).mean()
            if share >= min_share:
                hits.append((concept, share))
    return hits


@pytest.mark.slow
def test_demo_world_planted_blindspots_are_found(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=400)
    raw["real"].update({"corrupt_images": 2, "empty_captions": 2})  # bad inputs, recorded
    config_path = write_config(tmp_path, raw)
    result = run_whole_graph(config_path)
    assert result.success
    cfg = load_config(config_path)

    for model_key in cfg.models:
        truth = read_lineage(cfg.layout.generated_images(model_key))["planted_truth"]
        for word in truth["suppressed"]:
            assert planted_hits(cfg, model_key, "suppressed", word), (model_key, word)
        for word in truth["exaggerated"]:
            assert planted_hits(cfg, model_key, "exaggerated", word), (model_key, word)
    # Each model draws the other's planted attributes faithfully: the paper's verdict must not
    # flag them for it. (The significance verdict also catches real but entangled shifts of the
    # tiny random encoder's concepts, e.g. colour-on-texture conjunctions moved by a texture
    # plant, so it is held to the planted scorer's floors below instead.)
    for model_key, kind, word in [
        ("demo-b", "suppressed", "red"),
        ("demo-a", "suppressed", "blue"),
        ("demo-a", "exaggerated", "dotted"),
        ("demo-b", "exaggerated", "striped"),
    ]:
        assert not planted_hits(cfg, model_key, kind, word, "paper_verdict"), (model_key, word)

    # Every row traces back to the model version and the SAE.
    rows = query(
        cfg.layout.duckdb,
        "SELECT DISTINCT model_key, model_version, sae_version, run_id "
        "FROM concept_stats ORDER BY 1",
    )
    assert rows["model_key"].to_list() == ["demo-a", "demo-b"]
    assert rows["run_id"].to_list() == [result.run_id] * 2
    assert "unknown" not in rows["sae_version"].to_list()
    assert (cfg.layout.report / "index.html").exists()

    mats = result.get_asset_materialization_events()
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in mats}
    assert "lineage" in meta["real_features"]
    assert meta["real_images"]["n_images"].value == 400
    assert meta["real_images"]["n_empty_captions"].value == 2
    assert meta["real_features"]["n_valid"].value == 398  # two truncated files, recorded
    invalid = meta["real_features"]["n_invalid_by_status"].value
    assert sum(invalid.values()) == 2
    assert all(k.startswith("decode_error") for k in invalid)

    # The planted-truth scorer's floors, and the tables beyond the paper.
    scores = query(cfg.layout.duckdb, "SELECT * FROM planted_scores")
    recall = scores.filter(pl.col("metric") == "recall")
    assert recall["value"].to_list() == [1.0, 1.0]
    p5 = scores.filter((pl.col("metric") == "precision_at") & (pl.col("key") == "5"))
    assert p5["value"].min() >= 0.6
    deltas = query(
        cfg.layout.duckdb,
        "SELECT model_key, count(*) n FROM datapoint_deltas GROUP BY 1 ORDER BY 1",
    )
    assert deltas["n"].to_list() == [396, 396]  # 400 − 2 corrupt − 2 without a caption
    labels = query(cfg.layout.duckdb, "SELECT * FROM concept_labels")
    assert labels.height > 0
    assert query(cfg.layout.duckdb, "SELECT * FROM model_correlations").height > 0

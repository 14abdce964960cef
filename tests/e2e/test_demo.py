"""The whole graph on the demo world, in process: planted blindspots must be found, and the null
controls — a copy of the real images and a faithful redraw, both through the generated-image
path, on a world whose real images are JPEG and generated ones PNG — must flag nothing."""

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
WITH_CONTROLS = {**RANGE_TAGS, "dagster/asset_partition_range_end": "control-redraw"}


def run_whole_graph(config_path, instance=None, tags=RANGE_TAGS):
    job = defs.resolve_job_def("blindspot_job")
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=tags,
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


def check_distribution_floor(db):
    """The distribution metrics (docs/method.md §9): the copy control sits at FD 0 and PRDC 1,
    the redraw control at the finite-sample floor, and the planted models above it; demo-a-v2's
    new blue blindspot shows as lost recall and coverage against demo-a."""
    summaries = query(db, "SELECT * FROM model_summaries")
    rows = {r["model"]: r for r in summaries.iter_rows(named=True)}
    copy, redraw = rows["control-copy"], rows["control-redraw"]
    assert copy["fd_dinov2"] < 1e-9, copy
    assert [copy[m] for m in ("precision", "recall", "coverage")] == [1.0] * 3, copy
    # 396 valid captions, two images each
    assert copy["n_real"] == copy["n_captions"] == 396 and copy["feature_token"] == "cls"
    assert copy["n_generated"] == 2 * 396, copy
    assert redraw["coverage"] > 0.9 and redraw["recall"] > 0.9, redraw
    for key in ("demo-a", "demo-b"):
        model = rows[key]
        assert model["fd_dinov2_ci_low"] > redraw["fd_dinov2_ci_high"], (key, model, redraw)
        assert model["recall_ci_high"] < redraw["recall_ci_low"], (key, model, redraw)
        assert model["coverage_ci_high"] < redraw["coverage_ci_low"], (key, model, redraw)
    change = query(db, "SELECT * FROM blindspot_changes").row(0, named=True)
    assert change["base_recall"] == pytest.approx(rows["demo-a"]["recall"])
    assert change["recall_change_ci_high"] < 0 and change["coverage_change_ci_high"] < 0, change


@pytest.mark.slow
def test_demo_world_planted_blindspots_are_found(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=400, with_controls=True, images_per_caption=None)
    raw["real"].update({"corrupt_images": 2, "empty_captions": 2})  # bad inputs, recorded
    config_path = write_config(tmp_path, raw)
    result = run_whole_graph(config_path, tags=WITH_CONTROLS)
    assert result.success
    cfg = load_config(config_path)
    assert cfg.controls == ["control-copy", "control-redraw"]
    real_files = read_manifest(cfg.layout.real_images)["path"].to_list()
    assert all(p.endswith(".jpg") for p in real_files)  # real JPEG, generated PNG
    assert (cfg.layout.generated_images("control-redraw") / "demo-000010.png").exists()
    # two images per caption, as the demo runs: sample 1 has its own id, seed and features
    assert {m.images_per_caption for m in cfg.models.values()} == {2}
    demo_a = read_manifest(cfg.layout.generated_images("demo-a"))
    assert demo_a.height == 2 * 400 and demo_a["sample"].to_list() == [0] * 400 + [1] * 400
    assert (cfg.layout.generated_images("demo-a") / "demo-000010~s1.png").exists()
    assert read_lineage(cfg.layout.generated_images("demo-a"))["images_per_caption"] == 2

    # The null controls flag nothing, under either verdict; the planted models are bounded.
    flags = query(
        cfg.layout.duckdb,
        "SELECT model_key, count_if(paper_verdict)::INT paper, count_if(significant)::INT sig "
        "FROM blindspots GROUP BY 1",
    )
    per_model = {r["model_key"]: (r["paper"], r["sig"]) for r in flags.iter_rows(named=True)}
    assert per_model.get("control-copy", (0, 0)) == (0, 0)
    assert per_model.get("control-redraw", (0, 0)) == (0, 0)
    summaries = query(cfg.layout.duckdb, "SELECT * FROM model_summaries ORDER BY model")
    # The concept vocabulary covers every set; the planted suppressions replicate in a second
    # SAE trained with another seed.
    for row in summaries.iter_rows(named=True):
        assert row["recon_r2_real"] > 0.3 and row["recon_r2_gen"] > 0.3, row
        assert 0 < row["energy_explained_gen"] <= 1 and not row["vocabulary_gap"], row
    replicated = query(
        cfg.layout.duckdb,
        "SELECT model_key, replicated FROM blindspots WHERE rank = 1 ORDER BY model_key",
    )
    replicated = replicated.filter(pl.col("model_key").is_in(["demo-a", "demo-b"]))
    assert replicated["replicated"].to_list() == [True, True], replicated
    for model_key in ("demo-a", "demo-b"):
        paper, sig = per_model[model_key]
        # flags everything = broken verdict; the tiny random encoder entangles many concepts
        assert 2 <= sig <= 128 * 0.6 and 1 <= paper <= 128 * 0.25, (model_key, paper, sig)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["controls_clean"] is True
    assert summaries.filter(pl.col("is_control"))["model"].to_list() == [
        "control-copy",
        "control-redraw",
    ]
    assert summaries.filter(pl.col("is_control"))["expected_false_flags"].to_list() == [0.0, 0.0]
    # the first-ranked flag of each planted model is one of its planted suppressions
    for model_key, word in (("demo-a", "red"), ("demo-b", "blue")):
        first = query(
            cfg.layout.duckdb,
            f"SELECT concept FROM blindspots WHERE model_key = '{model_key}' AND rank = 1",
        )["concept"].item()
        hits = {c for c, _ in planted_hits(cfg, model_key, "suppressed", word, "significant")}
        assert first in hits, (model_key, first, hits)

    for model_key in ("demo-a", "demo-b"):
        truth = read_lineage(cfg.layout.generated_images(model_key))["planted_truth"]
        for word in truth["suppressed"]:
            assert planted_hits(cfg, model_key, "suppressed", word), (model_key, word)
        for word in truth["exaggerated"]:
            assert planted_hits(cfg, model_key, "exaggerated", word), (model_key, word)
    # Each model draws the other's planted attributes faithfully: the paper's verdict must not
    # flag them for it. The significance verdict's negative check is the controls above (zero
    # flags): on a planted model it also catches real but entangled shifts of the tiny random
    # encoder's concepts (blue-on-plain conjunctions move when a texture plant repaints plain
    # backgrounds), so it is bounded above instead of held to zero here.
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
    assert rows["model_key"].to_list() == sorted(cfg.models)
    assert rows["run_id"].to_list() == [result.run_id] * len(cfg.models)
    assert "unknown" not in rows["sae_version"].to_list()
    page = (cfg.layout.report / "index.html").read_text()
    assert "Null controls clean: control-copy, control-redraw" in page
    assert "control floor" in page and "not clean" not in page

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
    planted = scores.filter(pl.col("model").is_in(["demo-a", "demo-b"]))
    recall = planted.filter(pl.col("metric") == "recall")
    assert recall["value"].to_list() == [1.0, 1.0]
    p5 = planted.filter((pl.col("metric") == "precision_at") & (pl.col("key") == "5"))
    assert p5["value"].min() >= 0.6
    deltas = query(
        cfg.layout.duckdb,
        "SELECT model_key, count(*) n FROM datapoint_deltas GROUP BY 1 ORDER BY 1",
    )
    # 400 − 2 corrupt − 2 no caption = 396 pairs, each caption's two samples a row of its own
    assert deltas["n"].to_list() == [2 * 396] * len(cfg.models)
    pairs = query(cfg.layout.duckdb, "SELECT DISTINCT model_key, n_pairs FROM concept_stats")
    assert pairs["n_pairs"].to_list() == [396] * len(cfg.models)  # one pair per caption
    memo = query(cfg.layout.duckdb, "SELECT * FROM memorization_candidates")
    assert {"n_seeds", "reproduced_seeds", "reproduced_across_seeds"} <= set(memo.columns)
    # Memorisation at a rate a person can review (issue 28), at the default 1 per 1,000: the
    # models that copy nothing list about that many (the raw nearest distance, calibrated on
    # real→real, listed 11, 51, 108 and 29 of 800 for these four); control-copy's copies of
    # each caption's own real image are found, on both seeds.
    memo_rate = memo.group_by("model_key").agg(
        n=pl.len(),
        listed=pl.col("is_candidate").sum(),
        own_both=(
            pl.col("is_candidate") & pl.col("is_own_pair") & pl.col("reproduced_across_seeds")
        ).sum(),
    )
    rate = {r["model_key"]: r for r in memo_rate.iter_rows(named=True)}
    copying_nothing = ["control-redraw", "demo-a", "demo-a-v2", "demo-b"]
    assert all(rate[m]["listed"] <= 4 for m in copying_nothing), rate
    listed = sum(rate[m]["listed"] for m in copying_nothing)
    assert listed <= 0.0025 * sum(rate[m]["n"] for m in copying_nothing), rate
    assert rate["control-copy"]["own_both"] >= 0.95 * rate["control-copy"]["n"], rate
    # demo-a-v2 is demo-a plus a blue blindspot: the gate finds it as new, red stays as it was
    changes = query(cfg.layout.duckdb, "SELECT * FROM blindspot_changes")
    assert set(changes["comparison"]) == {"demo-a..demo-a-v2"} and changes.height == 128
    new = set(changes.filter(pl.col("status") == "new")["concept"].to_list())
    blue = {c for c, _ in planted_hits(cfg, "demo-a-v2", "suppressed", "blue", "significant")}
    assert new & blue, (new, blue)
    status = dict(zip(changes["concept"], changes["status"], strict=True))
    red = {c for c, _ in planted_hits(cfg, "demo-a", "suppressed", "red", "significant")}
    assert all(status[c] not in ("new", "resolved") for c in red), {c: status[c] for c in red}
    assert checks["blindspot_changes_gate"] is False  # a planted regression fails the gate
    assert 'id="changes-demo-a..demo-a-v2"' in page and "Gate fails" in page
    check_distribution_floor(cfg.layout.duckdb)
    assert "<th>FD (CLS)</th>" in page
    # the planted suppressions hold when the models are prompted again with new seeds
    for model_key, word in (("demo-a", "red"), ("demo-b", "blue")):
        planted = {c for c, _ in planted_hits(cfg, model_key, "suppressed", word, "significant")}
        verified = query(
            cfg.layout.duckdb,
            "SELECT concept, status FROM blindspot_verification "
            f"WHERE model_key = '{model_key}' AND kind = 'suppressed'",
        )
        statuses = dict(verified.iter_rows())
        assert planted & set(statuses), (model_key, planted, statuses)
        assert all(statuses[c] == "confirmed" for c in planted & set(statuses)), statuses
    labels = query(cfg.layout.duckdb, "SELECT * FROM concept_labels")
    assert labels.height > 0
    assert query(cfg.layout.duckdb, "SELECT * FROM model_correlations").height > 0

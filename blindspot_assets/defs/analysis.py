"""Stage 5 — analysis: per-concept statistics, blindspots, top images, the report (DuckDB)."""

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import torch

from blindspot_assets import stats as stats_lib
from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, progress_logger, table_md
from blindspot_assets.defs.concepts import concept_codes, real_concept_codes, sae
from blindspot_assets.defs.deployment import CPU_OP_TAGS
from blindspot_assets.defs.features import gen_features, real_features
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.partitions import model_keys, model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae import checkpoint as sae_checkpoint
from blindspot_assets.sae.checkpoint import HEADER_FILE, load_sae, read_header
from blindspot_assets.stats import (
    BlindspotParams,
    compute_concept_stats,
    flag_blindspots,
)
from blindspot_assets.stats import concept_map as concept_map_lib
from blindspot_assets.stats import cooccurrence as cooccurrence_lib
from blindspot_assets.stats.replication import without_replication
from blindspot_assets.stats.top_images import top_images
from blindspot_assets.store.images import model_version, read_lineage, read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import store_exists
from blindspot_assets.store.tables import read_table, refresh_views, write_table_partition


def _lineage_columns(
    context: dg.AssetExecutionContext, cfg: RunConfig, model_key: str, with_sae: bool = True
) -> dict[str, str]:
    """Columns stamped on every row so it traces back to the exact model and SAE version."""
    columns = {
        "model_key": model_key,
        "model_version": model_version(read_lineage(cfg.layout.generated_images(model_key))),
        "run_id": context.run.run_id,
    }
    if with_sae:
        columns["sae_version"] = sae_version(cfg.layout.sae)
    return columns


# Header fields that say how or where an SAE was made, not which SAE it is: wall-clock rates
# and the paths of the training stores (the same data on local disk or on S3 is the same data).
_UNVERSIONED = {"training_stores", "seconds", "train_tokens_per_s", "tokens_per_s", "device"}


def sae_version(sae_dir: Path) -> str:
    """A short hash of what decides the SAE: config, training-data version, step, quality."""
    header = read_header(sae_dir)
    header = {k: v for k, v in header.items() if k not in _UNVERSIONED}
    if isinstance(header.get("metrics"), dict):
        header["metrics"] = {k: v for k, v in header["metrics"].items() if k not in _UNVERSIONED}
    text = json.dumps(header, sort_keys=True, default=str)
    return "sae:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _stamp(df: pl.DataFrame, columns: dict[str, str]) -> pl.DataFrame:
    return df.with_columns([pl.lit(v).alias(k) for k, v in columns.items()])


def _write_per_model(
    context: dg.AssetExecutionContext,
    cfg: RunConfig,
    table: str,
    compute: Callable[[str], pl.DataFrame],
    with_sae: bool = True,
) -> dict[str, pl.DataFrame]:
    """For each model of the run: compute its rows, stamp lineage, write its partition file."""
    out = {}
    for model_key in model_keys(context):
        df = _stamp(compute(model_key), _lineage_columns(context, cfg, model_key, with_sae))
        write_table_partition(cfg.layout.tables, table, model_key, df)
        out[model_key] = df
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return out


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[real_concept_codes, concept_codes],
    kinds={"duckdb", "polars"},
    code_version="2",  # 2: minimum-effect significance with BH, the `significant` column
    description="Per concept and model: energies E_k of real and generated sets, nb_fire, ΔE, "
    "δ = sigmoid(ΔE/T), relative difference, paired uncertainty (table concept_stats).",
)
def concept_stats(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = cfg.stats.params
    written = _write_per_model(
        context,
        cfg,
        "concept_stats",
        lambda m: compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes(m), params),
    )
    counts = {m: df.height for m, df in written.items()}
    significant = {m: int(df["significant"].sum()) for m, df in written.items()}
    return dg.MaterializeResult(
        metadata={
            "duckdb": dg.MetadataValue.path(str(cfg.layout.duckdb)),
            "rows_per_model": dg.MetadataValue.json(counts),
            "significant_per_model": dg.MetadataValue.json(significant),
            "expected_false_flags": dg.MetadataValue.json(
                {m: stats_lib.expected_false_flags(n, params.alpha) for m, n in significant.items()}
            ),
            "params": lineage_md(params.__dict__),
        }
    )


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[concept_stats, sae, real_features, gen_features],
    kinds={"duckdb", "polars"},
    code_version="3",  # 2: one `significant`, read from concept_stats; 3: replication columns
    description="Concepts a model suppresses or exaggerates: the paper's δ-threshold verdict "
    "and the significance verdict side by side (table blindspots).",
)
def blindspots(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = cfg.stats.params
    written = _write_per_model(
        context,
        cfg,
        "blindspots",
        lambda m: _flagged_with_replication(cfg, m, params),
    )
    per_model: dict[str, Any] = {
        m: {
            "n_flagged": df.height,
            "control": cfg.model(m).control,
            **dict(df.group_by("kind").len().iter_rows()),
        }
        for m, df in written.items()
    }
    first = next(iter(written.values()))
    preview = first.sort("rank").select("concept", "kind", "delta", "delta_energy", "q_value")
    return dg.MaterializeResult(
        metadata={
            "per_model": dg.MetadataValue.json(per_model),
            "top_blindspots": table_md(preview),
        }
    )


def _flagged_with_replication(
    cfg: RunConfig, model_key: str, params: BlindspotParams
) -> pl.DataFrame:
    """The model's flagged concepts; with a replicate SAE (``sae.replicate_seed``), which of them
    replicate in it (null columns without one)."""
    flagged = flag_blindspots(read_table(cfg.layout.tables, "concept_stats", model_key), params)
    if not (cfg.layout.sae_replicate / HEADER_FILE).exists():
        return without_replication(flagged)
    model_a, _ = load_sae(cfg.layout.sae)
    model_b, _ = load_sae(cfg.layout.sae_replicate)
    return stats_lib.replication(
        flagged, model_a, model_b, cfg.layout.features(REAL), cfg.layout.features(model_key), params
    )


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[real_concept_codes, concept_codes],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="For every concept, its top-activating images in the real set and in each "
    "model's generated set, ranked by `stats.top_images_by` (table concept_top_images).",
)
def concept_top_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    counts = {}
    for dataset in [REAL, *cfg.models]:
        path = cfg.layout.codes(dataset)
        if not store_exists(path):
            context.log.warning(f"no concept codes for {dataset} yet; skipped")
            continue
        top = top_images(path, cfg.stats.params.top_images, by=cfg.stats.top_images_by)
        top = top.with_columns(pl.lit(dataset).alias("dataset"))
        write_table_partition(cfg.layout.tables, "concept_top_images", dataset, top)
        counts[dataset] = top.height
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(metadata={"rows_per_dataset": dg.MetadataValue.json(counts)})


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[real_concept_codes, concept_codes],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Per real/generated pair: ‖ξ(x')−ξ(x)‖ and the concepts most missing and most "
    "added (table datapoint_deltas).",
)
def datapoint_deltas(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    written = _write_per_model(
        context,
        cfg,
        "datapoint_deltas",
        lambda m: stats_lib.compute_datapoint_deltas(
            cfg.layout.codes(REAL), cfg.layout.codes(m), cfg.stats.top_datapoint_concepts
        ),
    )
    per_model = {
        m: {"n_pairs": df.height, "l2_mean": float(df["l2"].mean() or 0.0)}  # type: ignore[arg-type]
        for m, df in written.items()
    }
    return dg.MaterializeResult(metadata={"per_model": dg.MetadataValue.json(per_model)})


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[real_features, gen_features, real_concept_codes, concept_codes],
    kinds={"duckdb", "pytorch"},
    code_version="2",  # 2: patch-map and pixel evidence, exchangeability null, concept distance
    description="Generated images that are near copies of a real image: DINOv2 patch maps and "
    "image thumbnails (at several zooms) closer than real images come to each other, with the "
    "expected false-candidate count under exchangeability and the concept-space distance "
    "(table memorization_candidates).",
)
def memorization_candidates(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    codes = store_exists(cfg.layout.codes(REAL))
    written = _write_per_model(
        context,
        cfg,
        "memorization_candidates",
        lambda m: stats_lib.find_memorization_candidates(
            cfg.layout.features(REAL),
            cfg.layout.features(m),
            calibration_quantile=cfg.stats.memorization_quantile,
            seed=cfg.stats.params.seed,
            all_rows=True,  # every pair: the report shows the lowest distances, candidate or not
            real_images=cfg.layout.real_images,
            gen_images=cfg.layout.generated_images(m),
            real_codes=cfg.layout.codes(REAL) if codes else None,
            gen_codes=cfg.layout.codes(m) if codes and store_exists(cfg.layout.codes(m)) else None,
        ),
        with_sae=False,  # the concept distance is evidence, not the verdict
    )
    per_model = {m: int(df["is_candidate"].sum()) for m, df in written.items()}
    expected = {
        m: float(df["expected_false_candidates"][0]) if df.height else 0.0
        for m, df in written.items()
    }
    return dg.MaterializeResult(
        metadata={
            "candidates_per_model": dg.MetadataValue.json(per_model),
            "expected_false_candidates": dg.MetadataValue.json(expected),
        }
    )


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[real_concept_codes, real_images],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Automatic concept names: the caption terms most associated with each "
    "concept's activation over the real images (table concept_labels).",
)
def concept_labels(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    labels = stats_lib.label_concepts(
        cfg.layout.codes(REAL), read_manifest(cfg.layout.real_images), cfg.stats.label_terms
    )
    labels = labels.with_columns(pl.lit(sae_version(cfg.layout.sae)).alias("sae_version"))
    write_table_partition(cfg.layout.tables, "concept_labels", "all", labels)
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(metadata={"n_rows": labels.height, "preview": table_md(labels, 10)})


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[real_concept_codes],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Concept co-occurrence over the real set: ZᵀZ of the token codes (or of the "
    "per-image energies ξ), streamed a block of concepts at a time; each concept's top "
    "partners by cosine (table concept_cooccurrence).",
)
def concept_cooccurrence(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    spec = cfg.stats
    t0 = time.perf_counter()
    result = cooccurrence_lib.compute_cooccurrence(
        cfg.layout.codes(REAL),
        over=spec.cooccurrence_over,
        top=spec.cooccurrence_top,
        block=spec.cooccurrence_block,
    )
    table = result.table.with_columns(
        pl.lit(REAL).alias("dataset"), pl.lit(sae_version(cfg.layout.sae)).alias("sae_version")
    )
    write_table_partition(cfg.layout.tables, "concept_cooccurrence", REAL, table)
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(
        metadata={
            "n_rows": table.height,
            "n_concepts": table["concept"].n_unique(),
            "over": spec.cooccurrence_over,
            "rows_read_per_pass": result.n_rows,
            "passes": result.passes,
            "accumulator_mb": round(result.accumulator_bytes / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 2),
            "preview": table_md(table.filter(pl.col("rank") == 1).sort("cosine", descending=True)),
        }
    )


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[sae],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="A 2-D map of the concepts: t-SNE (openTSNE) of the SAE dictionary rows under "
    "cosine distance, for the report's concept map (table concept_map).",
)
def concept_map(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    t0 = time.perf_counter()
    model, _ = sae_checkpoint.load_sae(cfg.layout.sae)
    with torch.no_grad():
        dictionary = model.dictionary().float().cpu().numpy()
    table = concept_map_lib.concept_map_table(dictionary, seed=cfg.stats.params.seed, n_jobs=-1)
    table = table.with_columns(pl.lit(sae_version(cfg.layout.sae)).alias("sae_version"))
    write_table_partition(cfg.layout.tables, "concept_map", "all", table)
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(
        metadata={
            "n_concepts": table.height,
            "method": str(table["method"][0]) if table.height else "",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )


def _available(cfg: RunConfig, table: str) -> dict[str, pl.DataFrame]:
    out = {}
    for model_key in cfg.models:
        try:
            out[model_key] = read_table(cfg.layout.tables, table, model_key)
        except FileNotFoundError:
            continue
    return out


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[concept_stats, datapoint_deltas, blindspots, concept_top_images],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Across models: δ skewness, frequency vs relative difference, Pearson "
    "correlation of relative differences, model-vs-variant comparisons, and — for worlds with "
    "planted truth — recall and precision@k of the planted blindspots.",
)
def model_comparison(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = cfg.stats.params
    stats_by_model = _available(cfg, "concept_stats")
    meta: dict[str, Any] = {}
    if stats_by_model:
        recon = {
            dataset: stats_lib.reconstruction_quality(cfg.layout.codes(dataset))
            for dataset in [REAL, *stats_by_model]
            if store_exists(cfg.layout.codes(dataset))
        }
        summaries = stats_lib.model_summaries(stats_by_model, params, cfg.controls, recon)
        gaps = summaries.filter(pl.col("vocabulary_gap"))["model"].to_list()
        if gaps:
            context.log.warning(
                f"the SAE reconstructs the images of {gaps} much worse than the real ones: "
                "their content has concepts the dictionary cannot see (model_summaries)"
            )
        write_table_partition(cfg.layout.tables, "model_summaries", "all", summaries)
        meta["summaries"] = table_md(summaries)
        freq = pl.concat(
            [
                stats_lib.frequency_vs_relative(df, params).with_columns(
                    pl.lit(m).alias("model_key")
                )
                for m, df in stats_by_model.items()
            ],
            how="diagonal_relaxed",
        )
        write_table_partition(cfg.layout.tables, "frequency_vs_relative", "all", freq)
    if len(stats_by_model) > 1:
        corr = stats_lib.relative_correlations(stats_by_model)
        write_table_partition(cfg.layout.tables, "model_correlations", "all", corr)
        meta["correlations"] = table_md(corr)
    deltas = _available(cfg, "datapoint_deltas")
    variants = [
        stats_lib.compare_variants(deltas[a], deltas[b], params, a, b)
        for a, b in cfg.stats.variant_pairs
        if a in deltas and b in deltas
    ]
    if variants:
        comparison = pl.concat(variants, how="diagonal_relaxed")
        write_table_partition(cfg.layout.tables, "variant_comparisons", "all", comparison)
        meta["variants"] = table_md(comparison)
    planted = _planted_scores(cfg)
    if planted is not None:
        write_table_partition(cfg.layout.tables, "planted_scores", "all", planted)
        meta["planted_scores"] = table_md(planted)
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(metadata=meta)


def _planted_scores(cfg: RunConfig) -> pl.DataFrame | None:
    """Recall / precision@k of planted blindspots, for models whose lineage records a truth."""
    try:
        top = read_table(cfg.layout.tables, "concept_top_images", REAL)
    except FileNotFoundError:
        return None
    manifest = read_manifest(cfg.layout.real_images)
    frames = []
    for model_key, flagged in _available(cfg, "blindspots").items():
        truth = read_lineage(cfg.layout.generated_images(model_key)).get("planted_truth")
        if not isinstance(truth, dict):
            continue
        planted = {k: v for k, v in truth.items() if k in ("suppressed", "exaggerated")}
        if not any(planted.values()):  # nothing planted (a control): nothing to score
            continue
        summary, _ = stats_lib.score_planted(flagged, top, manifest, planted)
        frames.append(stats_lib.planted_summary_frame(summary, model_key))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    deps=[
        blindspots,
        concept_top_images,
        sae,
        concept_labels,
        datapoint_deltas,
        memorization_candidates,
        model_comparison,
        concept_cooccurrence,
        concept_map,
        dg.AssetKey("concept_names"),  # defs/naming.py (which imports this module)
        dg.AssetKey("blindspot_changes"),  # defs/changes.py (which imports this module)
        dg.AssetKey("blindspot_verification"),  # defs/verification.py (imports this module)
    ],
    kinds={"html"},
    code_version="2",  # 2: concept map, token-frequency bands, variant comparison
    description="A self-contained HTML report: per model the top suppressed and exaggerated "
    "concepts with their top real images beside the generated ones, and the lineage.",
)
def report(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    from blindspot_assets.report import build_report

    cfg = run_config.load()
    summary = build_report(
        cfg, cfg.layout.report, progress=progress_logger(context, "report heat maps")
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(summary.path)),
            "url": dg.MetadataValue.url(summary.path.resolve().as_uri()),
            "n_models": summary.n_models,
            "n_blindspots": summary.n_blindspots,
            "n_concept_cards": summary.n_concept_cards,
            "n_images": summary.n_images,
            "seconds": round(summary.seconds, 2),
            "top_blindspots": dg.MetadataValue.md(summary.preview_md),
        }
    )

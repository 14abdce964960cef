"""Stage 5 — analysis: per-concept statistics, blindspots, top images, the report (DuckDB).

Each asset reads the run config, calls one library function (``stats/``, ``stats/run_tables``,
``report/``) and records metadata; its checks are in ``defs/checks.py``.
"""

import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.concepts import concept_codes, real_concept_codes, sae
from blindspot_assets.defs.declare import config_of, stage_asset, table_asset
from blindspot_assets.defs.features import gen_features, real_features, run_encoder
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.metadata import lineage_md, progress_logger, table_md
from blindspot_assets.defs.partitions import model_keys
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.report import build_report
from blindspot_assets.sae.build import sae_dictionary
from blindspot_assets.stats import compute_concept_stats
from blindspot_assets.stats.concept_map import concept_map_table
from blindspot_assets.stats.cooccurrence import compute_cooccurrence
from blindspot_assets.stats.datapoints import compute_datapoint_deltas
from blindspot_assets.stats.labels import label_concepts
from blindspot_assets.stats.memorization import find_memorization_candidates
from blindspot_assets.stats.run_tables import (
    column_mean,
    flag_counts,
    flagged_with_replication,
    model_comparison_tables,
    nuisance_effects,
    strongest_partners,
    top_flags,
    top_images_by_dataset,
    with_sae_version,
    write_per_model,
    write_run_table,
)
from blindspot_assets.stats.significance import expected_false_flags
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import store_exists
from blindspot_assets.store.tables import clear_table_partition

MaterializeResult = dg.MaterializeResult[Any]


def per_model_tables(
    context: dg.AssetExecutionContext,
    cfg: RunConfig,
    table: str,
    compute: Callable[[str], pl.DataFrame],
    with_sae: bool = True,
) -> dict[str, pl.DataFrame]:
    """``table`` computed, stamped and written for each model partition of the run."""
    return write_per_model(cfg, table, model_keys(context), context.run.run_id, compute, with_sae)


@table_asset(
    per_model=True,
    deps=[real_concept_codes, concept_codes],
    reads=("stats",),
    description="Per concept and model: energies E_k of real and generated sets, nb_fire, ΔE, "
    "δ = sigmoid(ΔE/T), relative difference, paired uncertainty (table concept_stats).",
)
def concept_stats(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    params = cfg.stats.params
    written = per_model_tables(
        context,
        cfg,
        "concept_stats",
        lambda m: compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes(m), params),
    )
    significant = {m: int(df["significant"].sum()) for m, df in written.items()}
    return dg.MaterializeResult(
        metadata={
            "duckdb": dg.MetadataValue.path(str(cfg.layout.duckdb)),
            "rows_per_model": dg.MetadataValue.json({m: df.height for m, df in written.items()}),
            "significant_per_model": dg.MetadataValue.json(significant),
            "expected_false_flags": dg.MetadataValue.json(
                {m: expected_false_flags(n, params.alpha) for m, n in significant.items()}
            ),
            "params": lineage_md(params.__dict__),
        }
    )


@table_asset(
    deps=[real_images, real_features, sae, real_concept_codes],
    reads=("stats", "encoder", "images", "sae", "seed"),
    description="The nuisance probe, a null control that sees processing asymmetry: real "
    "images against themselves with a simulated history (fresh content vs. its real file's "
    "JPEG encode) and a mild blur, through the run's own pipeline (table nuisance_effects). "
    "Its history arm flags nothing when the image policy equalises histories.",
)
def nuisance_probe(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    if cfg.stats.probe_images == 0:
        clear_table_partition(cfg.layout.tables, "nuisance_effects", "all")
        return dg.MaterializeResult(metadata={"skipped": "stats.probe_images is 0"})
    table = with_sae_version(cfg, nuisance_effects(cfg, run_encoder(cfg)))
    write_run_table(cfg, "nuisance_effects", "all", table)
    flags = table.group_by("nuisance").agg(pl.col("significant").sum()).sort("nuisance")
    return dg.MaterializeResult(
        metadata={
            "n_images": int(table.select(pl.col("n_pairs").max()).item() or 0),
            "significant_per_arm": dg.MetadataValue.json(dict(flags.iter_rows())),
        }
    )


@table_asset(
    per_model=True,
    deps=[
        concept_stats,
        sae,
        real_features,
        gen_features,
        # the other models' codes: the consensus of `specific` (stats/specific.py)
        dg.AssetDep(concept_codes, partition_mapping=dg.AllPartitionMapping()),
        nuisance_probe,  # within_nuisance
    ],
    reads=("stats", "models"),
    description="Concepts a model suppresses or exaggerates: the paper's δ-threshold verdict "
    "and the significance verdict side by side, ranked by how much of the concept is lost or "
    "added, and whether the change is specific to this model against the other models' "
    "consensus (table blindspots).",
)
def blindspots(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    params = cfg.stats.params
    written = per_model_tables(
        context,
        cfg,
        "blindspots",
        lambda m: flagged_with_replication(cfg, m, params),
    )
    per_model = {
        m: {**flag_counts(df), "control": cfg.model(m).control} for m, df in written.items()
    }
    preview = top_flags(next(iter(written.values())))
    return dg.MaterializeResult(
        metadata={
            "per_model": dg.MetadataValue.json(per_model),
            "top_blindspots": table_md(preview),
        }
    )


@table_asset(
    deps=[real_concept_codes, concept_codes],
    reads=("stats", "models"),
    description="For every concept, its top-activating images in the real set and in each "
    "model's generated set, ranked by `stats.top_images_by` (table concept_top_images).",
)
def concept_top_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    tables, skipped = top_images_by_dataset(cfg)
    for dataset in skipped:
        context.log.warning(f"no concept codes for {dataset} yet; skipped")
    for dataset, top in tables.items():
        write_run_table(cfg, "concept_top_images", dataset, top)
    counts = {dataset: top.height for dataset, top in tables.items()}
    return dg.MaterializeResult(metadata={"rows_per_dataset": dg.MetadataValue.json(counts)})


@table_asset(
    per_model=True,
    deps=[real_concept_codes, concept_codes],
    reads=("stats",),
    description="Per real/generated pair: ‖ξ(x')−ξ(x)‖ and the concepts most missing and most "
    "added (table datapoint_deltas).",
)
def datapoint_deltas(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    written = per_model_tables(
        context,
        cfg,
        "datapoint_deltas",
        lambda m: compute_datapoint_deltas(
            cfg.layout.codes(REAL), cfg.layout.codes(m), cfg.stats.top_datapoint_concepts
        ),
    )
    per_model = {
        m: {"n_pairs": df.height, "l2_mean": column_mean(df, "l2")} for m, df in written.items()
    }
    return dg.MaterializeResult(metadata={"per_model": dg.MetadataValue.json(per_model)})


@stage_asset(
    group="analysis",
    per_model=True,
    deps=[real_features, gen_features, real_concept_codes, concept_codes],
    kinds={"duckdb", "pytorch"},
    reads=("stats",),
    description="Generated images that are near copies of a real image: on DINOv2 patch maps "
    "and image thumbnails (at several zooms), the nearest real image far closer than the 10 "
    "nearest (a local ratio calibrated on real images leave-one-out), with the expected "
    "false-candidate count and the concept-space distance (table memorization_candidates).",
)
def memorization_candidates(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    codes = store_exists(cfg.layout.codes(REAL))
    written = per_model_tables(
        context,
        cfg,
        "memorization_candidates",
        lambda m: find_memorization_candidates(
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


@table_asset(
    deps=[real_concept_codes, real_images],
    reads=("stats",),
    description="Automatic concept names: the caption terms most associated with each "
    "concept's activation over the real images (table concept_labels).",
)
def concept_labels(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    labels = label_concepts(
        cfg.layout.codes(REAL), read_manifest(cfg.layout.real_images), cfg.stats.label_terms
    )
    labels = with_sae_version(cfg, labels)
    write_run_table(cfg, "concept_labels", "all", labels)
    return dg.MaterializeResult(metadata={"n_rows": labels.height, "preview": table_md(labels, 10)})


@table_asset(
    deps=[real_concept_codes],
    reads=("stats",),
    description="Concept co-occurrence over the real set: ZᵀZ of the token codes (or of the "
    "per-image energies ξ), streamed a block of concepts at a time; each concept's top "
    "partners by cosine (table concept_cooccurrence).",
)
def concept_cooccurrence(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    spec = cfg.stats
    t0 = time.perf_counter()
    result = compute_cooccurrence(
        cfg.layout.codes(REAL),
        over=spec.cooccurrence_over,
        top=spec.cooccurrence_top,
        block=spec.cooccurrence_block,
    )
    table = with_sae_version(cfg, result.table)
    write_run_table(cfg, "concept_cooccurrence", REAL, table)
    return dg.MaterializeResult(
        metadata={
            "n_rows": table.height,
            "n_concepts": table["concept"].n_unique(),
            "over": spec.cooccurrence_over,
            "rows_read_per_pass": result.n_rows,
            "passes": result.passes,
            "accumulator_mb": round(result.accumulator_bytes / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 2),
            "preview": table_md(strongest_partners(table)),
        }
    )


@table_asset(
    deps=[sae],
    reads=("stats",),
    description="A 2-D map of the concepts: t-SNE (openTSNE) of the SAE dictionary rows under "
    "cosine distance, for the report's concept map (table concept_map).",
)
def concept_map(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    t0 = time.perf_counter()
    table = concept_map_table(sae_dictionary(cfg.layout.sae), seed=cfg.stats.params.seed, n_jobs=-1)
    table = with_sae_version(cfg, table)
    write_run_table(cfg, "concept_map", "all", table)
    return dg.MaterializeResult(
        metadata={
            "n_concepts": table.height,
            "method": str(table["method"][0]) if table.height else "",
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )


@table_asset(
    deps=[
        concept_stats,
        datapoint_deltas,
        blindspots,
        concept_top_images,
        real_features,
        gen_features,
    ],  # fmt: skip
    reads=("stats", "models"),
    description="Across models: δ skewness, distribution metrics on the encoder's CLS token "
    "(FD, precision, recall, density, coverage with bootstrap intervals), frequency vs relative "
    "difference, Pearson correlation of relative differences, model-vs-variant comparisons, and "
    "— for worlds with planted truth — recall and precision@k of the planted blindspots.",
)
def model_comparison(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> MaterializeResult:
    cfg = config_of(context, run_config)
    result = model_comparison_tables(cfg, cfg.stats.params)
    if result.vocabulary_gaps:
        context.log.warning(
            f"the SAE reconstructs the images of {result.vocabulary_gaps} much worse than the "
            "real ones: their content has concepts the dictionary cannot see (model_summaries)"
        )
    for name, table in result.tables.items():
        write_run_table(cfg, name, "all", table)
    shown = {"model_summaries": "summaries", "model_correlations": "correlations"}
    shown |= {"variant_comparisons": "variants", "planted_scores": "planted_scores"}
    metadata: dict[str, Any] = {
        shown[n]: table_md(t) for n, t in result.tables.items() if n in shown
    }
    summaries = result.tables.get("model_summaries")
    if summaries is not None and "feature_encoder" in summaries.columns:
        encoders = sorted(str(e) for e in summaries["feature_encoder"].drop_nulls().unique())
        metadata["distribution_features"] = f"CLS token (token 0) of {', '.join(encoders)}"
    return dg.MaterializeResult(metadata=metadata)


@stage_asset(
    group="analysis",
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
    reads=("name", "models", "stats", "labels", "real", "seed"),
    description="A self-contained HTML report: per model the top suppressed and exaggerated "
    "concepts with their top real images beside the generated ones, and the lineage.",
)
def report(context: dg.AssetExecutionContext, run_config: RunConfigResource) -> MaterializeResult:
    cfg = config_of(context, run_config)
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

"""Stage 5 — analysis: per-concept statistics, blindspots, top images, the report (DuckDB)."""

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, table_md
from blindspot_assets.defs.concepts import concept_codes, real_concept_codes, sae
from blindspot_assets.defs.partitions import model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae.checkpoint import read_header
from blindspot_assets.stats import (
    BlindspotParams,
    compute_concept_stats,
    flag_blindspots,
    top_images_per_concept,
)
from blindspot_assets.store.images import model_version, read_lineage
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.tables import read_table, refresh_views, write_table_partition


def _lineage_columns(
    context: dg.AssetExecutionContext, cfg: RunConfig, model_key: str
) -> dict[str, str]:
    """Columns stamped on every row so it traces back to the exact model and SAE version."""
    return {
        "model_key": model_key,
        "model_version": model_version(read_lineage(cfg.layout.generated_images(model_key))),
        "sae_version": sae_version(cfg.layout.sae),
        "run_id": context.run.run_id,
    }


def sae_version(sae_dir: Path) -> str:
    """A short hash of the SAE's header (config, training-data version, step, metrics)."""
    header = json.dumps(read_header(sae_dir), sort_keys=True, default=str)
    return "sae:" + hashlib.sha256(header.encode()).hexdigest()[:12]


def _stamp(df: pl.DataFrame, columns: dict[str, str]) -> pl.DataFrame:
    return df.with_columns([pl.lit(v).alias(k) for k, v in columns.items()])


@dg.asset(
    group_name="analysis",
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[real_concept_codes, concept_codes],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Per concept and model: energies E_k of real and generated sets, nb_fire, ΔE, "
    "δ = sigmoid(ΔE/T), relative difference, paired uncertainty (table concept_stats).",
)
def concept_stats(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = BlindspotParams.from_spec(cfg.stats)
    counts = {}
    for model_key in context.partition_keys:
        stats = compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes(model_key), params)
        stats = _stamp(stats, _lineage_columns(context, cfg, model_key))
        write_table_partition(cfg.layout.tables, "concept_stats", model_key, stats)
        counts[model_key] = stats.height
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(
        metadata={
            "duckdb": dg.MetadataValue.path(str(cfg.layout.duckdb)),
            "rows_per_model": dg.MetadataValue.json(counts),
            "params": lineage_md(params.__dict__),
        }
    )


@dg.asset(
    group_name="analysis",
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[concept_stats],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Concepts a model suppresses or exaggerates: the paper's δ-threshold verdict "
    "and the significance verdict side by side (table blindspots).",
)
def blindspots(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = BlindspotParams.from_spec(cfg.stats)
    per_model: dict[str, Any] = {}
    preview = None
    for model_key in context.partition_keys:
        stats = read_table(cfg.layout.tables, "concept_stats", model_key)
        flagged = flag_blindspots(stats, params)
        flagged = _stamp(flagged, _lineage_columns(context, cfg, model_key))
        write_table_partition(cfg.layout.tables, "blindspots", model_key, flagged)
        kinds = dict(flagged.group_by("kind").len().iter_rows()) if flagged.height else {}
        per_model[model_key] = {"n_flagged": flagged.height, **kinds}
        if preview is None:
            preview = flagged.sort("delta").select("concept", "kind", "delta", "delta_energy")
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(
        metadata={
            "per_model": dg.MetadataValue.json(per_model),
            "top_blindspots": table_md(preview if preview is not None else pl.DataFrame()),
        }
    )


@dg.asset(
    group_name="analysis",
    deps=[real_concept_codes, concept_codes],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="For every concept, its top-activating images in the real set and in each "
    "model's generated set (table concept_top_images).",
)
def concept_top_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    counts = {}
    for dataset in [REAL, *cfg.models]:
        path = cfg.layout.codes(dataset)
        if not path.exists():
            context.log.warning(f"no concept codes for {dataset} yet; skipped")
            continue
        top = top_images_per_concept(path, cfg.stats.top_images).with_columns(
            pl.lit(dataset).alias("dataset")
        )
        write_table_partition(cfg.layout.tables, "concept_top_images", dataset, top)
        counts[dataset] = top.height
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    return dg.MaterializeResult(metadata={"rows_per_dataset": dg.MetadataValue.json(counts)})


@dg.asset(
    group_name="analysis",
    deps=[blindspots, concept_top_images, sae],
    kinds={"html"},
    code_version="1",
    description="A self-contained HTML report: per model the top suppressed and exaggerated "
    "concepts with their top real images beside the generated ones, and the lineage.",
)
def report(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    from blindspot_assets.report import build_report

    cfg = run_config.load()
    summary = build_report(cfg, cfg.layout.report)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(summary.path)),
            "url": dg.MetadataValue.url(summary.path.resolve().as_uri()),
            "n_blindspots": summary.n_blindspots,
            "n_images": summary.n_images,
        }
    )

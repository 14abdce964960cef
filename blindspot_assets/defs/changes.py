"""Blindspot changes between model versions: the table ``blindspot_changes`` (one Parquet
partition per comparison of ``stats.compare``) and the gate's asset check. The statistics are
``stats/changes.py``; this module only wires them."""

from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.analysis import _lineage_columns, concept_stats
from blindspot_assets.defs.common import table_md
from blindspot_assets.defs.concepts import concept_codes, real_concept_codes
from blindspot_assets.defs.deployment import CPU_OP_TAGS
from blindspot_assets.defs.partitions import (
    changes_mapping,
    comparison_key,
    model_keys,
    model_partitions,
    single_run,
)
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.stats.changes import blindspot_changes as compute_changes
from blindspot_assets.stats.changes import regressions, status_counts
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.tables import read_table, refresh_views, write_table_partition
from blindspot_assets.store.versions import locate, version_comparisons

TABLE = "blindspot_changes"


def _comparisons(cfg: RunConfig) -> list[tuple[str, str]]:
    """``stats.compare``, then each model against the version it replaced."""
    return [*cfg.stats.compare, *version_comparisons(cfg.layout, cfg.models)]


@dg.asset(
    group_name="analysis",
    op_tags=CPU_OP_TAGS,
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[
        real_concept_codes,
        dg.AssetDep(concept_stats, partition_mapping=changes_mapping),
        dg.AssetDep(concept_codes, partition_mapping=changes_mapping),
    ],
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Per comparison [base, candidate] of stats.compare (run in the candidate's "
    "partition): each concept's status new / resolved / persisting / worsened / improved / "
    "unchanged and the paired change of ΔE with its interval (table blindspot_changes).",
)
def blindspot_changes(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    params = cfg.stats.params
    counts: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    previews = []
    for candidate in model_keys(context):
        # the configured comparisons, and the version this model replaced (store/versions.py)
        bases = [b for b, c in _comparisons(cfg) if c == candidate]
        for base in bases:
            key = comparison_key(base, candidate)
            base_layout = locate(cfg.layout, base)
            try:
                base_stats = read_table(base_layout.tables, "concept_stats", base)
                cand_stats = read_table(cfg.layout.tables, "concept_stats", candidate)
            except FileNotFoundError as exc:
                skipped[key] = f"{exc}: materialise concept_stats of both models first"
                context.log.warning(f"comparison {key} skipped: {skipped[key]}")
                continue
            df = compute_changes(
                cfg.layout.codes(REAL),
                base_layout.codes(base),
                cfg.layout.codes(candidate),
                base_stats,
                cand_stats,
                params,
            )
            lineage = _lineage_columns(context, cfg, candidate)
            df = df.with_columns(
                pl.lit(key).alias("comparison"),
                pl.lit(base).alias("base"),
                pl.lit(candidate).alias("candidate"),
                pl.lit(str(base_stats["model_version"][0])).alias("base_model_version"),
                pl.lit(str(cand_stats["model_version"][0])).alias("candidate_model_version"),
                *(pl.lit(v).alias(k) for k, v in lineage.items()),
            )
            write_table_partition(cfg.layout.tables, TABLE, key, df)
            counts[key] = {
                **status_counts(df),
                "regressions": regressions(df, cfg.stats.fail_on).height,
            }
            previews.append(df.filter(pl.col("status") != "unchanged"))
    refresh_views(cfg.layout.duckdb, cfg.layout.tables)
    cols = ["comparison", "concept", "status", "kind", "change", "change_ci_low"]
    cols += ["change_ci_high", "change_q_value"]
    preview = pl.concat(previews).select(cols) if previews else pl.DataFrame()
    return dg.MaterializeResult(
        metadata={
            "status_counts": dg.MetadataValue.json(counts),
            "skipped": dg.MetadataValue.json(skipped),
            "fail_on": dg.MetadataValue.json(list(cfg.stats.fail_on)),
            "changes": table_md(preview, 20),
        }
    )


@dg.asset_check(
    asset=blindspot_changes,
    description="The blindspot gate: fails when a comparison of stats.compare has a regression "
    "(stats.fail_on, default new-suppressed, new-exaggerated, worsened) or was not computed.",
)
def blindspot_changes_gate(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    if not _comparisons(cfg):
        return dg.AssetCheckResult(
            passed=True,
            description="no comparison configured (stats.compare) and no archived model version",
        )
    per_comparison: dict[str, Any] = {}
    problems = []
    for base, candidate in _comparisons(cfg):
        key = comparison_key(base, candidate)
        try:
            df = read_table(cfg.layout.tables, TABLE, key)
        except FileNotFoundError:
            problems.append(f"{key}: not computed yet")
            continue
        bad = regressions(df, cfg.stats.fail_on)
        per_comparison[key] = {
            "regressions": bad.height,
            "concepts": [
                f"{r['concept']} {r['status']}-{r['kind']}" for r in bad.iter_rows(named=True)
            ],
        }
        if bad.height:
            problems.append(f"{key}: {bad.height} regression(s)")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "per_comparison": dg.MetadataValue.json(per_comparison),
            "fail_on": dg.MetadataValue.json(list(cfg.stats.fail_on)),
        },
        description="; ".join(problems) if problems else "no regression",
    )

"""Blindspot changes between model versions: the table ``blindspot_changes`` (one Parquet
partition per comparison of ``stats.compare`` and per archived model version). The statistics
are ``stats/changes.py``, called through ``stats/run_tables.comparison_changes``; the gate's
check is in ``defs/checks.py``."""

import math
from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.defs.analysis import concept_stats
from blindspot_assets.defs.concepts import concept_codes, real_concept_codes
from blindspot_assets.defs.declare import config_of, table_asset
from blindspot_assets.defs.features import gen_features, real_features
from blindspot_assets.defs.metadata import table_md
from blindspot_assets.defs.partitions import (
    changes_mapping,
    comparison_key,
    model_keys,
)
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.stats.changes import change_preview, regressions, status_counts
from blindspot_assets.stats.run_tables import comparison_changes, comparisons, write_run_table

TABLE = "blindspot_changes"


def distribution_md(df: pl.DataFrame) -> dict[str, float | None]:
    """The change of FD and coverage of a comparison (the same on each row), for metadata."""
    out: dict[str, float | None] = {}
    for column in ("fd_dinov2_change", "coverage_change"):
        if column in df.columns and df.height:
            value = float(df[column][0])
            out[column] = round(value, 4) if math.isfinite(value) else None
    return out


@table_asset(
    per_model=True,
    deps=[
        real_concept_codes,
        dg.AssetDep(concept_stats, partition_mapping=changes_mapping),
        dg.AssetDep(concept_codes, partition_mapping=changes_mapping),
        real_features,
        dg.AssetDep(gen_features, partition_mapping=changes_mapping),  # distribution metrics
    ],
    reads=("stats", "models"),
    description="Per comparison [base, candidate] of stats.compare (run in the candidate's "
    "partition): each concept's status new / resolved / persisting / worsened / improved / "
    "unchanged and the paired change of ΔE with its interval, and both sides' distribution "
    "metrics with their paired change (table blindspot_changes).",
)
def blindspot_changes(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult[Any]:
    cfg = config_of(context, run_config)
    params = cfg.stats.params
    counts: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    written = []
    for candidate in model_keys(context):
        # the configured comparisons, and the version this model replaced (store/versions.py)
        for base in [b for b, c in comparisons(cfg) if c == candidate]:
            key = comparison_key(base, candidate)
            try:
                df = comparison_changes(cfg, base, candidate, key, context.run.run_id, params)
            except FileNotFoundError as exc:
                skipped[key] = str(exc)
                context.log.warning(f"comparison {key} skipped: {skipped[key]}")
                continue
            write_run_table(cfg, TABLE, key, df)
            counts[key] = {
                **status_counts(df),
                "regressions": regressions(df, cfg.stats.fail_on).height,
                **distribution_md(df),
            }
            written.append(df)
    return dg.MaterializeResult(
        metadata={
            "status_counts": dg.MetadataValue.json(counts),
            "skipped": dg.MetadataValue.json(skipped),
            "fail_on": dg.MetadataValue.json(list(cfg.stats.fail_on)),
            "changes": table_md(change_preview(written), 20),
        }
    )

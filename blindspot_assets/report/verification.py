"""The report's view of ``blindspot_verification``: each flagged concept's status beside it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from blindspot_assets.report.data import load_table

COLUMN = "verification_status"


def with_status(
    flagged: pl.DataFrame | None, tables_root: str | Path, model_key: str
) -> pl.DataFrame | None:
    """``flagged`` (a model's blindspots) with ``verification_status`` — confirmed,
    not_confirmed, inconclusive or skipped; null where the concept was not verified, or the
    model's verification partition does not exist — joined on the concept."""
    if flagged is None:
        return None
    table = load_table(tables_root, "blindspot_verification", model_key)
    if table is None:
        return flagged.with_columns(pl.lit(None, pl.String).alias(COLUMN))
    status = (
        table.drop_nulls("concept")
        .select(pl.col("concept").cast(flagged.schema["concept"]), pl.col("status").alias(COLUMN))
        .unique("concept", keep="first")
    )
    return flagged.join(status, on="concept", how="left")

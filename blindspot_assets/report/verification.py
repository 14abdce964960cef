"""The report's view of ``blindspot_verification``: each flagged concept's status beside it."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from blindspot_assets.store.tables import read_table

COLUMN = "verification_status"


def with_status(
    flagged: pl.DataFrame | None, tables_root: str | Path, model_key: str
) -> pl.DataFrame | None:
    """``flagged`` (a model's blindspots) with ``verification_status`` — confirmed,
    not_confirmed, inconclusive or skipped; null where the concept was not verified — joined
    on the concept, when the model's verification partition exists."""
    if flagged is None or "concept" not in flagged.columns:
        return flagged
    try:
        table = read_table(tables_root, "blindspot_verification", model_key)
    except (FileNotFoundError, ValueError):
        return flagged
    status = (
        table.drop_nulls("concept")
        .select(pl.col("concept").cast(flagged.schema["concept"]), pl.col("status").alias(COLUMN))
        .unique("concept", keep="first")
    )
    return flagged.drop(COLUMN, strict=False).join(status, on="concept", how="left")

"""The result tables' schema rules: the lineage columns every row carries, the documented
columns of the per-model tables, and what makes a partition wrong (the asset checks' rules)."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from blindspot_assets.config import BLINDSPOT_KINDS
from blindspot_assets.stats.concepts import CONCEPT_STATS_COLUMNS

# Stamped on every per-model row so it traces back to the exact model, SAE and run.
LINEAGE_COLUMNS = ("model_key", "model_version", "sae_version", "run_id")

# Column → accepted dtype classes; other documented columns only need to exist.
TYPED_COLUMNS: dict[str, frozenset[str]] = {
    "concept": frozenset({"int"}),
    **{c: frozenset({"str"}) for c in (*LINEAGE_COLUMNS, "kind")},
    "paper_verdict": frozenset({"bool"}),
    "significant": frozenset({"bool"}),
    "nb_fire_real": frozenset({"int", "float"}),
    "nb_fire_gen": frozenset({"int", "float"}),
    **{
        c: frozenset({"float"})
        for c in ("energy_real", "energy_gen", "delta_energy", "delta", "relative")
    },
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "concept_stats": (*CONCEPT_STATS_COLUMNS, *LINEAGE_COLUMNS),
    "blindspots": (
        "concept", "kind", "delta", "delta_energy", "relative", "paper_verdict", "significant",
        *LINEAGE_COLUMNS,
    ),
}  # fmt: skip


def dtype_class(dtype: pl.DataType) -> str:
    """bool / int / float / str, or the dtype's own name."""
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype in (pl.String, pl.Categorical):
        return "str"
    return str(dtype)


def table_problems(df: pl.DataFrame, table: str, model_key: str) -> list[str]:
    """What is wrong with one partition of a result table (empty list: nothing)."""
    problems = []
    missing = [c for c in TABLE_COLUMNS[table] if c not in df.columns]
    if missing:
        problems.append(f"missing columns {missing}")
    for col, accepted in TYPED_COLUMNS.items():
        if col in df.columns and dtype_class(df.schema[col]) not in accepted:
            problems.append(f"{col} is {df.schema[col]}, expected {sorted(accepted)}")
    if "concept" in df.columns and df["concept"].is_duplicated().any():
        problems.append("duplicate concept rows")
    if "model_key" in df.columns and df.height and set(df["model_key"].unique()) != {model_key}:
        problems.append(f"model_key values {sorted(df['model_key'].unique())} ≠ {model_key!r}")
    if "delta" in df.columns and df.height:
        delta = df["delta"].cast(pl.Float64, strict=False).drop_nulls()
        if ((delta < 0) | (delta > 1)).any():
            problems.append("δ outside [0, 1]")
    if table == "blindspots" and "kind" in df.columns:
        bad = set(df["kind"].unique().to_list()) - set(BLINDSPOT_KINDS)
        if bad:
            problems.append(f"unknown kind values {sorted(map(str, bad))}")
    return problems


def stamp(df: pl.DataFrame, columns: Mapping[str, str]) -> pl.DataFrame:
    """``df`` with a constant column per entry (lineage stamped on every row)."""
    return df.with_columns([pl.lit(v).alias(k) for k, v in columns.items()])

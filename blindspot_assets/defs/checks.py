"""Asset checks that watch the data between stages: generated features finite and of the real
features' shape, the SAE's reconstruction quality and dead concepts, the result tables' schemas.

Each check reads what the asset wrote (row stores, the SAE header, the Parquet partitions), so it
can run again at any time from the UI. Checks over a partitioned asset look at every model whose
output exists and name the failing models in their metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.analysis import blindspots, concept_stats
from blindspot_assets.defs.concepts import sae
from blindspot_assets.defs.features import check_feature_store, gen_features
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae.checkpoint import read_header
from blindspot_assets.stats.concepts import CONCEPT_STATS_COLUMNS
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore, store_exists
from blindspot_assets.store.tables import read_table

# Bounds of the SAE check. A warning, not an error: a small demo SAE may sit below them and the
# statistics still run; a real run below them deserves a look before anyone trusts its concepts.
SAE_MIN_R2 = 0.5
SAE_MAX_DEAD_FRACTION = 0.5

LINEAGE_COLUMNS = ("model_key", "model_version", "sae_version", "run_id")
_KINDS = {"suppressed", "exaggerated"}


def _dtype_class(dtype: pl.DataType) -> str:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype in (pl.String, pl.Categorical):
        return "str"
    return str(dtype)


# Column → accepted dtype classes; other documented columns only need to exist.
_TYPED: dict[str, set[str]] = {
    "concept": {"int"},
    "model_key": {"str"},
    "model_version": {"str"},
    "sae_version": {"str"},
    "run_id": {"str"},
    "kind": {"str"},
    "paper_verdict": {"bool"},
    "significant": {"bool"},
    "nb_fire_real": {"int", "float"},
    "nb_fire_gen": {"int", "float"},
    **{c: {"float"} for c in ("energy_real", "energy_gen", "delta_energy", "delta", "relative")},
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "concept_stats": (*CONCEPT_STATS_COLUMNS, *LINEAGE_COLUMNS),
    "blindspots": (
        "concept", "kind", "delta", "delta_energy", "relative", "paper_verdict", "significant",
        *LINEAGE_COLUMNS,
    ),
}  # fmt: skip


def table_problems(df: pl.DataFrame, table: str, model_key: str) -> list[str]:
    """What is wrong with one partition of a result table (empty list: nothing)."""
    problems = []
    missing = [c for c in TABLE_COLUMNS[table] if c not in df.columns]
    if missing:
        problems.append(f"missing columns {missing}")
    for col, accepted in _TYPED.items():
        if col in df.columns and _dtype_class(df.schema[col]) not in accepted:
            problems.append(f"{col} is {df.schema[col]}, expected {sorted(accepted)}")
    if "concept" in df.columns and df["concept"].is_duplicated().any():
        problems.append("duplicate concept rows")
    if "model_key" in df.columns and df.height and set(df["model_key"].unique()) != {model_key}:
        problems.append(f"model_key values {sorted(df['model_key'].unique())} ≠ {model_key!r}")
    if "delta" in df.columns and df.height:
        delta = df["delta"].cast(pl.Float64, strict=False).drop_nulls().to_numpy()
        if np.any((delta < 0) | (delta > 1)):
            problems.append("δ outside [0, 1]")
    if table == "blindspots" and "kind" in df.columns:
        bad = set(df["kind"].unique().to_list()) - _KINDS
        if bad:
            problems.append(f"unknown kind values {sorted(map(str, bad))}")
    return problems


def _table_check(cfg: RunConfig, table: str) -> dg.AssetCheckResult:
    per_model: dict[str, Any] = {}
    for model_key in cfg.models:
        try:
            df = read_table(cfg.layout.tables, table, model_key)
        except FileNotFoundError:
            continue
        per_model[model_key] = {"rows": df.height, "problems": table_problems(df, table, model_key)}
    return _per_model_result(
        per_model,
        {"required_columns": dg.MetadataValue.json(list(TABLE_COLUMNS[table]))},
        f"no partition of {table} written yet",
    )


def _per_model_result(
    per_model: dict[str, Any], metadata: dict[str, Any], when_empty: str
) -> dg.AssetCheckResult:
    """Passed when some model has output and none has problems; failing models named."""
    failing = sorted(m for m, r in per_model.items() if r["problems"])
    return dg.AssetCheckResult(
        passed=bool(per_model) and not failing,
        metadata={
            "per_model": dg.MetadataValue.json(per_model),
            "failing_models": dg.MetadataValue.json(failing),
            **metadata,
        },
        description=None if per_model else when_empty,
    )


def feature_store_problems(
    path: str | Path, expected_rows: int, token_shape: tuple[int, int] | None
) -> dict[str, Any]:
    """Finiteness and completeness (the real features' check, reused) plus the shape a generated
    set must have: one row per manifest row, the real features' (T, d)."""
    base = check_feature_store(path, token_shape[1] if token_shape else None)
    found = {k: getattr(v, "value", v) for k, v in base.metadata.items()}
    shape = RowStore.open(path).array("tokens").shape
    problems = []
    if not found.get("complete", True):
        problems.append("not every row written")
    if found.get("nonfinite_rows"):
        problems.append(f"{found['nonfinite_rows']} valid rows with non-finite values")
    if len(shape) != 3 or (token_shape is not None and tuple(shape[1:]) != token_shape):
        problems.append(f"tokens have shape {tuple(shape)}, real features have (N, *{token_shape})")
    if shape[0] != expected_rows:
        problems.append(f"{shape[0]} rows for {expected_rows} manifest rows")
    return {**found, "problems": problems}


@dg.asset_check(
    asset=gen_features,
    description="Every model's features: finite, complete, one row per generated-manifest row, "
    "and the same (tokens, dim) as the real features (same encoder).",
)
def gen_features_finite_and_shaped(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    real_path = cfg.layout.features(REAL)
    token_shape = None
    if store_exists(real_path):
        shape = RowStore.open(real_path).array("tokens").shape
        token_shape = (int(shape[1]), int(shape[2]))
    per_model: dict[str, Any] = {}
    for model_key in cfg.models:
        path = cfg.layout.features(model_key)
        if not store_exists(path):
            continue
        n_rows = read_manifest(cfg.layout.generated_images(model_key)).height
        per_model[model_key] = feature_store_problems(path, n_rows, token_shape)
    return _per_model_result(
        per_model, {"real_token_shape": str(token_shape)}, "no model's features written yet"
    )


@dg.asset_check(
    asset=sae,
    description=f"SAE quality from its header metrics (held-out tokens): R² ≥ {SAE_MIN_R2} and "
    f"dead-concept fraction ≤ {SAE_MAX_DEAD_FRACTION}. Warns; does not block.",
)
def sae_quality_in_bounds(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    try:
        header = read_header(cfg.layout.sae)
    except FileNotFoundError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    metrics = header.get("metrics") or {}
    r2, dead = metrics.get("r2"), metrics.get("dead_fraction")
    problems = []
    if not isinstance(r2, int | float) or not np.isfinite(r2):
        problems.append(f"no finite r2 in the SAE header metrics (got {r2!r})")
    elif not SAE_MIN_R2 <= r2 <= 1.0:
        problems.append(f"R² = {r2:.3f} outside [{SAE_MIN_R2}, 1]")
    if not isinstance(dead, int | float) or not np.isfinite(dead):
        problems.append(f"no finite dead_fraction in the SAE header metrics (got {dead!r})")
    elif not 0.0 <= dead <= SAE_MAX_DEAD_FRACTION:
        problems.append(f"dead fraction = {dead:.3f} above {SAE_MAX_DEAD_FRACTION}")
    meta: dict[str, Any] = {
        "r2": float(r2) if isinstance(r2, int | float) else None,
        "dead_fraction": float(dead) if isinstance(dead, int | float) else None,
        "min_r2": SAE_MIN_R2,
        "max_dead_fraction": SAE_MAX_DEAD_FRACTION,
        "problems": dg.MetadataValue.json(problems),
        "data_version": str(header.get("data_version")),
    }
    for key in ("mean_l0", "mse", "eval_tokens"):
        if isinstance(metrics.get(key), int | float):
            meta[key] = float(metrics[key])
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={k: v for k, v in meta.items() if v is not None},
    )


@dg.asset_check(
    asset=concept_stats,
    description="concept_stats partitions: documented columns and types, one row per concept, "
    "δ in [0, 1], model_key matching the partition.",
)
def concept_stats_schema(run_config: RunConfigResource) -> dg.AssetCheckResult:
    return _table_check(run_config.load(), "concept_stats")


@dg.asset_check(
    asset=blindspots,
    description="blindspots partitions: documented columns and types, kind ∈ {suppressed, "
    "exaggerated}, boolean verdicts, model_key matching the partition.",
)
def blindspots_schema(run_config: RunConfigResource) -> dg.AssetCheckResult:
    return _table_check(run_config.load(), "blindspots")


@dg.asset_check(
    asset=blindspots,
    description="Null controls are clean: a control model (family control, or control: true) "
    "has no blindspot by construction, so any concept flagged on it — by either verdict — is a "
    "pipeline artefact, and the other models' flags cannot be trusted until it is explained.",
)
def controls_clean(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    flags: dict[str, Any] = {}
    for model_key in cfg.controls:
        try:
            df = read_table(cfg.layout.tables, "blindspots", model_key)
        except FileNotFoundError:
            continue
        flags[model_key] = {
            "paper_verdict": int(df["paper_verdict"].sum()),
            "significant": int(df["significant"].sum()),
        }
    dirty = {m: f for m, f in flags.items() if f["paper_verdict"] or f["significant"]}
    if not cfg.controls:
        description = "the run config registers no control model: add one (family: control)"
    elif not flags:
        description = "no control partition materialised yet"
    elif dirty:
        description = "; ".join(
            f"control {m} flags {f['significant']} significant and {f['paper_verdict']} "
            "paper-verdict concepts: a pipeline artefact, see README 'Null controls'"
            for m, f in dirty.items()
        )
    else:
        description = f"controls {sorted(flags)}: 0 flags"
    return dg.AssetCheckResult(
        passed=bool(flags) and not dirty,
        # an artefact on a control is an error; a run without one is unverified (a warning)
        severity=dg.AssetCheckSeverity.ERROR if dirty else dg.AssetCheckSeverity.WARN,
        metadata={"flags_per_control": dg.MetadataValue.json(flags)},
        description=description,
    )

"""The result tables' schemas: the lineage columns every row carries, the columns of every table
the report reads (``TABLE_SCHEMAS``), the required columns of the per-model tables, and what
makes a partition wrong (the asset checks' rules)."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from blindspot_assets.config import BLINDSPOT_KINDS
from blindspot_assets.stats.changes import CHANGES_COLUMNS
from blindspot_assets.stats.concepts import CONCEPT_STATS_COLUMNS
from blindspot_assets.stats.replication import REPLICATION_COLUMNS
from blindspot_assets.stats.specific import SPECIFIC_COLUMNS

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
# distribution metrics on the encoder's CLS token (stats/distribution.py), each with its interval
_DISTRIBUTION = tuple(
    f"{m}{end}"
    for m in ("fd_dinov2", "precision", "recall", "density", "coverage")
    for end in ("", "_ci_low", "_ci_high")
)
_SAMPLES = ("n_captions", "n_real", "n_generated", "prdc_k", "feature_token", "feature_encoder")

# The columns of the tables the report reads (docs/tables.md; the pair distribution metrics that
# variant_comparisons and blindspot_changes also carry are not read, so not listed). The report
# sees these and no other (report/data.py), so a column it reads must be named here; a partition
# written before a column existed reads as null in it.
TABLE_SCHEMAS: dict[str, tuple[str, ...]] = {
    "concept_stats": (*CONCEPT_STATS_COLUMNS, *LINEAGE_COLUMNS),
    "blindspots": (
        "rank", "concept", "kind", "delta", "delta_energy", "relative", "change_lcb",
        "effect_size", "specific", *SPECIFIC_COLUMNS[1:], "within_nuisance", "nuisance_effect_size",
        "delta_energy_ci_low", "delta_energy_ci_high", "p_value", "q_value", "paper_verdict",
        "significant", "energy_real", "energy_gen", "image_freq_real", "n_pairs",
        "rank_effect_size", *REPLICATION_COLUMNS,
        *LINEAGE_COLUMNS,
    ),
    "concept_top_images": ("concept", "dataset", "image_id", "rank", "score"),
    "concept_labels": ("concept", "rank", "term", "score", "lift", "n_images_term", "sae_version"),
    "concept_names": (
        "concept", "name", "captions", "image_ids", "n_images", "model_id", "model_version",
        "prompt", "sae_version", "run_id",
    ),
    "datapoint_deltas": (
        "image_id", "sample", "gen_image_id", "l2", "norm_real", "norm_gen", "l2_relative",
        "missing_concepts", "missing_values", "added_concepts", "added_values", *LINEAGE_COLUMNS,
    ),
    "memorization_candidates": (
        "gen_image_id", "nearest_real_id", "distance", "threshold", "evidence",
        "patch_distance", "patch_ratio", "patch_threshold", "pixel_distance", "pixel_ratio",
        "pixel_threshold",
        "concept_distance", "own_concept_distance", "expected_false_candidates", "is_own_pair",
        "is_candidate", "caption_id", "sample", "n_seeds", "reproduced_seeds",
        "reproduced_across_seeds", *LINEAGE_COLUMNS,
    ),
    "model_summaries": (
        "model", "n_pairs", "n_concepts_active", "delta_mean", "delta_skewness",
        "n_suppressed_paper", "n_exaggerated_paper", "n_suppressed_significant",
        "n_exaggerated_significant", "freq_relative_spearman", "expected_false_flags",
        "is_control", "recon_r2_real", "recon_r2_gen", "energy_explained_real",
        "energy_explained_gen", "vocabulary_gap", *_DISTRIBUTION, *_SAMPLES,
    ),
    "model_correlations": ("model_a", "model_b", "pearson_r", "n_concepts"),
    "frequency_vs_relative": (
        "model_key", "bin", "freq_low", "freq_high", "n_concepts", "mean_relative",
        "median_relative", "frac_suppressed_paper", "frac_suppressed_significant",
    ),
    "variant_comparisons": (
        "model_a", "model_b", "n", "l2_mean_a", "l2_mean_b", "l2_median_a", "l2_median_b",
        "mean_diff", "ci_low", "ci_high", "effect_size", "p_value", "frac_b_closer",
    ),
    "concept_map": ("concept", "x", "y", "method", "sae_version"),
    "blindspot_changes": (
        "comparison", "base", "candidate", "base_model_version", "candidate_model_version",
        *CHANGES_COLUMNS, *LINEAGE_COLUMNS,
    ),
    "blindspot_verification": (
        "concept", "kind", "flag_rank", "status", "reason", "captions_from", "n_captions",
        "n_images", "energy_real", "energy_gen", "delta_energy", "delta_energy_ci_low",
        "delta_energy_ci_high", "relative", "effect_size", "p_value", "q_value",
        "p_value_refute", "q_value_refute", *LINEAGE_COLUMNS,
    ),
}  # fmt: skip

# The columns every partition of a per-model table must have (the asset checks).
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

"""Per-model summaries of the paper's further analyses (docs/method.md §8), as polars frames.

They read the small per-concept tables (``compute_concept_stats``) and per-pair tables
(``datapoint_deltas``), never the codes. "Active" concepts are those with any energy in the
real or the generated set: a dead SAE concept scores δ = 0.5 and would only dilute a summary.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping

import numpy as np
import polars as pl

from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reconstruction import (
    VOCABULARY_GAP,
    Reconstruction,
)
from blindspot_assets.stats.significance import expected_false_flags
from blindspot_assets.stats.uncertainty import PairedDiffAccumulator
from blindspot_assets.store.layout import REAL

ACTIVE = (pl.col("energy_real") + pl.col("energy_gen")) > 0


def _active(stats_df: pl.DataFrame, active_only: bool) -> pl.DataFrame:
    return stats_df.filter(ACTIVE) if active_only else stats_df


def skewness(values: np.ndarray) -> float:
    """Fisher–Pearson sample skewness g1 = m3 / m2^1.5 (scipy.stats.skew's default)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 3:
        return float("nan")
    centred = x - x.mean()
    m2 = float(np.mean(centred**2))
    return float(np.mean(centred**3) / m2**1.5) if m2 > 0 else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_rank(np.asarray(x)), _rank(np.asarray(y)))


def delta_histogram(
    stats_df: pl.DataFrame, bins: int = 20, active_only: bool = True
) -> pl.DataFrame:
    """Histogram of δ over [0, 1]: ``bin_low``, ``bin_high``, ``count``, ``fraction``."""
    delta = _active(stats_df, active_only)["delta"].to_numpy()
    counts, edges = np.histogram(delta, bins=bins, range=(0.0, 1.0))
    return pl.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": counts.astype(np.int64),
            "fraction": counts / max(int(counts.sum()), 1),
        }
    )


def frequency_vs_relative(
    stats_df: pl.DataFrame, params: BlindspotParams, n_bins: int = 10
) -> pl.DataFrame:
    """Do rare concepts get suppressed more? Concepts binned by real image frequency.

    Bins are quantiles of ``image_freq_real`` over concepts that fire in the real set. Columns:
    ``bin`` (0 = rarest), ``freq_low``, ``freq_high``, ``n_concepts``, ``mean_relative``,
    ``median_relative``, ``frac_suppressed_paper`` (δ < threshold), ``frac_suppressed_significant``
    (ΔE < 0 and ``significant``).
    """
    df = stats_df.filter(pl.col("image_freq_real") > 0)
    if df.is_empty():
        return pl.DataFrame()
    edges = np.unique(np.quantile(df["image_freq_real"].to_numpy(), np.linspace(0, 1, n_bins + 1)))
    bin_index = np.clip(np.searchsorted(edges, df["image_freq_real"].to_numpy(), "right") - 1,
                        0, max(edges.size - 2, 0))  # fmt: skip
    return (
        df.with_columns(bin=pl.Series(bin_index, dtype=pl.Int32))
        .group_by("bin")
        .agg(
            freq_low=pl.col("image_freq_real").min(),
            freq_high=pl.col("image_freq_real").max(),
            n_concepts=pl.len(),
            mean_relative=pl.col("relative").mean(),
            median_relative=pl.col("relative").median(),
            frac_suppressed_paper=(pl.col("delta") < params.suppressed_below).mean(),
            frac_suppressed_significant=(
                (pl.col("delta_energy") < 0) & pl.col("significant")
            ).mean(),
        )
        .sort("bin")
    )


def model_summaries(
    stats_by_model: Mapping[str, pl.DataFrame],
    params: BlindspotParams,
    controls: Collection[str] = (),
    reconstruction: Mapping[str, Reconstruction] | None = None,
) -> pl.DataFrame:
    """One row per model: δ distribution, blindspot counts, frequency–relative association.

    Columns: ``model``, ``n_pairs``, ``n_concepts_active``, ``delta_mean``, ``delta_skewness``
    (over active concepts; the paper reports SD2.1 −0.54 … Kandinsky −0.23),
    ``n_suppressed_paper``, ``n_exaggerated_paper``, ``n_suppressed_significant``,
    ``n_exaggerated_significant``, ``freq_relative_spearman`` (Spearman ρ of real image
    frequency vs relative difference over concepts that fire in the real set),
    ``expected_false_flags`` (α × significant concepts: the FDR bound in counts), ``is_control``
    (a null control: every flag on it is a pipeline artefact); with ``reconstruction`` (by
    dataset, ``real`` included): ``recon_r2_real``/``_gen`` and ``energy_explained_real``/
    ``_gen`` (``stats.reconstruction``), and ``vocabulary_gap`` (the SAE reconstructs the
    generated set worse than the real one by more than ``VOCABULARY_GAP`` in R²).
    """
    nan = Reconstruction(0, float("nan"), float("nan"))
    recon = reconstruction or {}
    rows = []
    for model, stats in stats_by_model.items():
        active = stats.filter(ACTIVE)
        fired = stats.filter(pl.col("image_freq_real") > 0)
        significant = pl.col("significant")
        n_significant = int(stats["significant"].sum())
        rows.append(
            {
                "model": model,
                "n_pairs": int(stats["n_pairs"].max() or 0),  # type: ignore[arg-type]
                "n_concepts_active": active.height,
                "delta_mean": float(active["delta"].mean() or np.nan),  # type: ignore[arg-type]
                "delta_skewness": skewness(active["delta"].to_numpy()),
                "n_suppressed_paper": active.filter(
                    pl.col("delta") < params.suppressed_below
                ).height,
                "n_exaggerated_paper": active.filter(
                    pl.col("delta") > params.exaggerated_above
                ).height,
                "n_suppressed_significant": active.filter(
                    significant & (pl.col("delta_energy") < 0)
                ).height,
                "n_exaggerated_significant": active.filter(
                    significant & (pl.col("delta_energy") > 0)
                ).height,
                "freq_relative_spearman": spearman(
                    fired["image_freq_real"].to_numpy(), fired["relative"].to_numpy()
                ),
                "expected_false_flags": expected_false_flags(n_significant, params.alpha),
                "is_control": model in controls,
                "recon_r2_real": recon.get(REAL, nan).r2,
                "recon_r2_gen": recon.get(model, nan).r2,
                "energy_explained_real": recon.get(REAL, nan).energy_explained,
                "energy_explained_gen": recon.get(model, nan).energy_explained,
                "vocabulary_gap": bool(
                    recon.get(REAL, nan).r2 - recon.get(model, nan).r2 > VOCABULARY_GAP
                ),
            }
        )
    return pl.DataFrame(rows)


def relative_correlations(stats_by_model: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Pearson r of relative differences for every pair of models (paper: SD1.5↔SD2.1 0.82).

    Over concepts active in both models' tables. Columns: ``model_a``, ``model_b``,
    ``pearson_r``, ``n_concepts``.
    """
    rows = []
    for a, b in itertools.combinations(sorted(stats_by_model), 2):
        joined = (
            stats_by_model[a].filter(ACTIVE).select("concept", rel_a="relative")
            .join(stats_by_model[b].filter(ACTIVE).select("concept", rel_b="relative"),
                  on="concept")
        )  # fmt: skip
        rows.append(
            {
                "model_a": a,
                "model_b": b,
                "pearson_r": pearson(joined["rel_a"].to_numpy(), joined["rel_b"].to_numpy()),
                "n_concepts": joined.height,
            }
        )
    schema = {"model_a": pl.String, "model_b": pl.String, "pearson_r": pl.Float64,
              "n_concepts": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def l2_histograms(deltas_by_model: Mapping[str, pl.DataFrame], bins: int = 30) -> pl.DataFrame:
    """Distribution of ‖ξ(x') − ξ(x)‖ per model on shared bins: ``model``, ``bin_low``,
    ``bin_high``, ``count``, ``fraction``."""
    all_l2 = [df["l2"].to_numpy() for df in deltas_by_model.values() if df.height]
    if not all_l2:
        return pl.DataFrame()
    high = float(max(x.max() for x in all_l2)) or 1.0
    edges = np.linspace(0.0, high, bins + 1)
    parts = []
    for model, df in deltas_by_model.items():
        counts, _ = np.histogram(df["l2"].to_numpy(), bins=edges)
        parts.append(
            pl.DataFrame(
                {
                    "model": [model] * bins,
                    "bin_low": edges[:-1],
                    "bin_high": edges[1:],
                    "count": counts.astype(np.int64),
                    "fraction": counts / max(int(counts.sum()), 1),
                }
            )
        )
    return pl.concat(parts)


def _per_caption(deltas: pl.DataFrame) -> pl.DataFrame:
    """``datapoint_deltas`` with one row per caption: l2 the mean over its samples (the table
    itself when it has one row per caption)."""
    if not deltas["image_id"].is_duplicated().any():
        return deltas
    return deltas.group_by("image_id", maintain_order=True).agg(pl.col("l2").mean())


def compare_variants(
    deltas_a: pl.DataFrame,
    deltas_b: pl.DataFrame,
    params: BlindspotParams,
    model_a: str = "a",
    model_b: str = "b",
) -> pl.DataFrame:
    """A model against a variant of itself (e.g. SD 1.5 vs SD 1.5 + DPO) on shared captions.

    Pairs the two ``datapoint_deltas`` tables by image id (a caption's mean over its samples)
    and compares ‖ξ(x') − ξ(x)‖. One row:
    ``model_a``, ``model_b``, ``n``, ``l2_mean_a``, ``l2_mean_b``, ``l2_median_a``,
    ``l2_median_b``, ``mean_diff`` (b − a, negative = b stays closer to the real image),
    ``ci_low``, ``ci_high`` (paired bootstrap), ``effect_size`` (d_z), ``p_value`` (sign-flip),
    ``frac_b_closer``.
    """
    joined = (
        _per_caption(deltas_a)
        .select("image_id", l2_a="l2")
        .join(_per_caption(deltas_b).select("image_id", l2_b="l2"), on="image_id")
    )
    l2_a = joined["l2_a"].to_numpy()[:, None].astype(np.float32)
    l2_b = joined["l2_b"].to_numpy()[:, None].astype(np.float32)
    acc = PairedDiffAccumulator(1, joined.height, params.n_bootstrap, params.n_permutations,
                                params.seed)  # fmt: skip
    acc.update(l2_a, l2_b)
    res = acc.finish(params.ci_level)
    return pl.DataFrame(
        {
            "model_a": [model_a],
            "model_b": [model_b],
            "n": [joined.height],
            "l2_mean_a": [float(np.mean(l2_a)) if joined.height else np.nan],
            "l2_mean_b": [float(np.mean(l2_b)) if joined.height else np.nan],
            "l2_median_a": [float(np.median(l2_a)) if joined.height else np.nan],
            "l2_median_b": [float(np.median(l2_b)) if joined.height else np.nan],
            "mean_diff": [float(res.mean_diff_k[0])],
            "ci_low": [float(res.ci_low_k[0])],
            "ci_high": [float(res.ci_high_k[0])],
            "effect_size": [float(res.effect_size_k[0])],
            "p_value": [float(res.p_value_k[0])],
            "frac_b_closer": [float(np.mean(l2_b < l2_a)) if joined.height else np.nan],
        }
    )

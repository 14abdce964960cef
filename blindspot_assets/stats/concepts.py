"""Per-concept statistics of one generated set against the real set, and the blindspot verdicts."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.stats.energy import EnergyAccumulator
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reading import (
    iter_paired_blocks,
    n_concepts_of,
    open_store,
    pair_rows,
)
from blindspot_assets.stats.scores import benjamini_hochberg, blindspot_scores
from blindspot_assets.stats.significance import (
    minimum_effect_p_values,
    relative_lower_bound,
)
from blindspot_assets.stats.sparse_sums import Entries
from blindspot_assets.stats.uncertainty import PairedDiffAccumulator, PairedDiffResult
from blindspot_assets.store.rowstore import RowStore

CONCEPT_STATS_COLUMNS = (
    "concept", "n_pairs", "energy_real", "energy_gen", "nb_fire_real", "nb_fire_gen",
    "image_freq_real", "image_freq_gen", "delta_energy", "delta", "relative",
    "delta_energy_ci_low", "delta_energy_ci_high", "delta_ci_low", "delta_ci_high",
    "effect_size", "p_value", "q_value", "significant", "p_value_no_change", "change_lcb",
)  # fmt: skip


def _sigmoid(x: np.ndarray, temperature: float) -> np.ndarray:
    # The CI of δ is δ at the ends of the CI of ΔE: route through the one owner of δ.
    return blindspot_scores(x, np.zeros_like(x), temperature)["delta"]


def compute_concept_stats(
    real_codes: str | Path | RowStore,
    gen_codes: str | Path | RowStore,
    params: BlindspotParams,
) -> pl.DataFrame:
    """One row per concept: the paper's scores and their paired uncertainty.

    Pairing rule: real image x and generated image x' form a pair when x' carries x's image id
    (x' was prompted with x's caption) and both rows are valid in their code stores; everything
    here, energies included, is computed over those pairs only, so E(R) and E(G) describe the
    same captions. Streams ``params.block_rows`` pairs at a time.

    Columns (energies in the SAE's activation units, summed over an image's tokens):
    ``concept``; ``n_pairs``; ``energy_real``/``energy_gen`` = E_k over the pairs;
    ``nb_fire_real``/``nb_fire_gen`` = non-zero token codes; ``image_freq_real``/``_gen`` =
    fraction of images where ξ_k > 0; ``delta_energy``, ``delta``, ``relative`` (see
    ``blindspot_scores``); ``delta_energy_ci_low/high`` and ``delta_ci_low/high`` (paired
    bootstrap percentile CI at ``params.ci_level``); ``effect_size`` (Cohen's d_z of the paired
    differences); ``p_value`` (minimum-effect test of "the change is negligible", see
    ``significance``), ``q_value`` (Benjamini–Hochberg over all concepts), ``significant``
    (q < ``alpha``: the one definition used by every table and the report),
    ``p_value_no_change`` (two-sided sign-flip test of ΔE = 0, see ``uncertainty``),
    ``change_lcb`` (lower confidence bound of |relative|: how much of the concept is lost or
    added, 1 = gone entirely; ``significance.relative_lower_bound``).
    """
    real, gen = open_store(real_codes), open_store(gen_codes)
    n_concepts = n_concepts_of(real)
    if n_concepts_of(gen) != n_concepts:
        raise ValueError(f"real codes have {n_concepts} concepts, generated {n_concepts_of(gen)}")
    pairing = pair_rows(real, gen)
    real_acc, gen_acc = EnergyAccumulator(n_concepts), EnergyAccumulator(n_concepts)
    diff_acc = PairedDiffAccumulator(
        n_concepts, pairing.n_pairs, params.n_bootstrap, params.n_permutations, params.seed
    )
    blocks = iter_paired_blocks(real, gen, pairing, ("xi", "nfire"), params.block_rows)
    with ThreadPoolExecutor(1) as pool:
        for _, _, real_block, gen_block in blocks:
            update_paired(real_acc, gen_acc, diff_acc, real_block, gen_block, pool)
    diff = diff_acc.finish(params.ci_level)
    return concept_stats_frame(real_acc, gen_acc, diff, params)


def _side(acc: EnergyAccumulator, block: dict[str, np.ndarray]) -> Entries:
    entries = Entries.of(block["xi"])
    acc.update(block["xi"], block["nfire"], entries)
    return entries


def update_paired(
    real_acc: EnergyAccumulator,
    gen_acc: EnergyAccumulator,
    diff_acc: PairedDiffAccumulator,
    real_block: dict[str, np.ndarray],
    gen_block: dict[str, np.ndarray],
    pool: Executor | None = None,
) -> None:
    """One block of pairs into the three accumulators, each side's non-zeros found once.

    With a ``pool`` the two sides' passes (numpy, one core each, the GIL released) run side
    by side, and the resampling weights are drawn beside the moments."""
    if pool is None:
        entries = (_side(real_acc, real_block), _side(gen_acc, gen_block))
    else:
        found = pool.submit(_side, gen_acc, gen_block)
        entries = (_side(real_acc, real_block), found.result())
    diff_acc.update(real_block["xi"], gen_block["xi"], entries, pool)


def concept_stats_frame(
    real_acc: EnergyAccumulator,
    gen_acc: EnergyAccumulator,
    diff: PairedDiffResult,
    params: BlindspotParams,
) -> pl.DataFrame:
    """Assemble the concept-stats table from finished accumulators (shared with benchmarks)."""
    n = max(real_acc.n_images, 1)
    p_k = minimum_effect_p_values(diff.moments, params.min_effect_size, params.min_relative)
    q_k = benjamini_hochberg(p_k)
    scores = blindspot_scores(gen_acc.energy_k, real_acc.energy_k, params.temperature)
    return pl.DataFrame(
        {
            "concept": np.arange(real_acc.n_concepts, dtype=np.int32),
            "n_pairs": np.full(real_acc.n_concepts, diff.n_pairs, dtype=np.int64),
            "energy_real": real_acc.energy_k,
            "energy_gen": gen_acc.energy_k,
            "nb_fire_real": real_acc.nb_fire_k,
            "nb_fire_gen": gen_acc.nb_fire_k,
            "image_freq_real": real_acc.n_images_firing_k / n,
            "image_freq_gen": gen_acc.n_images_firing_k / n,
            "delta_energy": scores["delta_energy"],
            "delta": scores["delta"],
            "relative": scores["relative"],
            "delta_energy_ci_low": diff.ci_low_k,
            "delta_energy_ci_high": diff.ci_high_k,
            "delta_ci_low": _sigmoid(diff.ci_low_k, params.temperature),
            "delta_ci_high": _sigmoid(diff.ci_high_k, params.temperature),
            "effect_size": diff.effect_size_k,
            "p_value": p_k,
            "q_value": q_k,
            "significant": q_k < params.alpha,  # NaN is never < α
            "p_value_no_change": diff.p_value_k,
            "change_lcb": relative_lower_bound(diff.moments, params.ci_level),
        }
    ).select(CONCEPT_STATS_COLUMNS)


def flag_blindspots(stats_df: pl.DataFrame, params: BlindspotParams) -> pl.DataFrame:
    """The concepts flagged by the paper's δ thresholds or by significance, ranked.

    ``paper_verdict``: δ < ``suppressed_below`` or δ > ``exaggerated_above`` (the paper's).
    ``significant``: as in ``compute_concept_stats`` (minimum-effect test, BH at ``alpha``).
    A concept is listed when either verdict holds; ``kind`` is "suppressed" when ΔE < 0, else
    "exaggerated". ``rank`` — the order a user reads first — puts significant concepts first,
    then orders by ``change_lcb`` (how surely how much of the concept is lost or added: a
    concept that is gone ranks above a mild shift of a frequent one), then |effect size|.
    ``rank_effect_size`` keeps the order by |effect size| (significant first), then |ΔE|.
    """
    df = stats_df.with_columns(
        paper_verdict=(pl.col("delta") < params.suppressed_below)
        | (pl.col("delta") > params.exaggerated_above),
        significant=pl.col("significant").fill_null(False),
    )
    flagged = (
        df.filter(pl.col("paper_verdict") | pl.col("significant"))
        .with_columns(
            kind=pl.when(pl.col("delta_energy") < 0)
            .then(pl.lit("suppressed"))
            .otherwise(pl.lit("exaggerated"))
        )
        .sort(
            [pl.col("significant"), pl.col("effect_size").abs(), pl.col("delta_energy").abs()],
            descending=True,
            nulls_last=True,
        )
        .with_row_index("rank_effect_size", offset=1)
        .sort(
            [pl.col("significant"), pl.col("change_lcb"), pl.col("effect_size").abs()],
            descending=True,
            nulls_last=True,
            maintain_order=True,
        )
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank", "rank_effect_size").cast(pl.Int32))
    )
    columns = [
        "rank", "concept", "kind", "delta", "delta_energy", "relative", "change_lcb",
        "effect_size", "delta_energy_ci_low", "delta_energy_ci_high", "p_value", "q_value",
        "paper_verdict", "significant", "energy_real", "energy_gen", "image_freq_real",
        "n_pairs", "rank_effect_size",
    ]  # fmt: skip
    return flagged.select([c for c in columns if c in flagged.columns])

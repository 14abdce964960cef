"""Blindspot changes between two generated sets of the same real images: a base (e.g. a model's
released version) and a candidate (its next version, or a variant).

Both sets answer the same captions, so the comparison is paired per caption. For concept k:

- ``change`` = mean over captions x of ξ_k(x″) − ξ_k(x′), with x′ the base's and x″ the
  candidate's image for x's caption (each a caption's mean over its samples when a model makes
  several images per caption), over the captions whose real image, base image and
  candidate image are all valid. It is the paired difference ΔE_k(candidate) − ΔE_k(base): the
  real term cancels, and with the same pairs on both sides it equals the difference of the two
  ``concept_stats.delta_energy`` values exactly.
- its interval: mean ± z·sd/√n (large-sample normal interval at ``params.ci_level``), and
  ``change_effect_size`` = d_z of the per-caption differences.
- ``change_significant``: the project's one test (``significance``), applied to candidate
  against base instead of generated against real: the minimum-effect test of "the change is
  negligible" (|d_z| ≤ ``min_effect_size`` and |relative| ≤ ``min_relative``, relative =
  (E″ − E′) / (E″ + E′)), Benjamini–Hochberg over all concepts, q < ``alpha``.

Status of concept k, from the ``significant`` verdict of ``concept_stats`` on each side (a
blindspot = significant; its kind K from the sign of ΔE: suppressed when ΔE < 0, else
exaggerated, as in ``flag_blindspots``) and from ``change_significant``. "Away from zero" for
kind K means further suppressed (change < 0) for a suppressed concept, further exaggerated
(change > 0) for an exaggerated one; "towards zero" the opposite.

- ``new``: the candidate flags k as K, the base does not flag it as K (not at all, or as the
  other kind), and the change is significant away from zero for K;
- ``resolved``: the base flags k as K, the candidate does not flag it as K, and the change is
  significant towards zero for K;
- ``worsened``: both flag k as the same K and the change is significant away from zero;
- ``improved``: both flag k as the same K and the change is significant towards zero;
- ``persisting``: both flag k as the same K, and the change is not significant;
- ``borderline``: one side flags k (or the two flag different kinds) but the change between
  the sets is not significant (in the direction that would make it new or resolved): a
  verdict that flipped near its margin — sampling noise, not evidence that the versions differ;
- ``unchanged``: neither side flags k.

A verdict flip alone is not a status change: on two independent draws of the same model, concepts
near the significance margin flip both ways (measured on the demo at 400 images: 21 verdicts
flipped between demo-a and a redraw that also cannot draw triangles, 1 with a significant
change). ``kind`` is the
candidate's kind where the candidate flags k, else the base's, else null.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl

from blindspot_assets.config import BLINDSPOT_KINDS, CHANGE_STATUSES, parse_fail_on
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reading import (
    Pairing,
    iter_paired_blocks,
    n_concepts_of,
    open_store,
    pair_generated,
)
from blindspot_assets.stats.scores import benjamini_hochberg
from blindspot_assets.stats.significance import PairedMoments, minimum_effect_p_values
from blindspot_assets.store.rowstore import RowStore

Codes = str | Path | RowStore

CHANGES_COLUMNS = (
    "concept", "status", "kind", "base_kind", "candidate_kind", "base_significant",
    "candidate_significant", "base_delta_energy", "candidate_delta_energy", "base_delta",
    "candidate_delta", "base_q_value", "candidate_q_value", "n_pairs", "change",
    "change_ci_low", "change_ci_high", "change_effect_size", "change_p_value", "change_q_value",
    "change_significant", "energy_base", "energy_candidate",
)  # fmt: skip


def paired_change(
    real_codes: Codes, base_codes: Codes, cand_codes: Codes, params: BlindspotParams
) -> pl.DataFrame:
    """Per concept, the paired change ξ_k(x″) − ξ_k(x′) of the candidate against the base (see
    the module docstring): ``concept``, ``n_pairs``, ``energy_base``, ``energy_candidate``,
    ``change``, ``change_ci_low/high``, ``change_effect_size``, ``change_p_value``,
    ``change_q_value``, ``change_significant``. Streams ``params.block_rows`` captions at a time.
    """
    real, base, cand = open_store(real_codes), open_store(base_codes), open_store(cand_codes)
    n_concepts = n_concepts_of(base)
    if n_concepts_of(cand) != n_concepts or n_concepts_of(real) != n_concepts:
        raise ValueError(
            f"concept counts differ: real {n_concepts_of(real)}, base {n_concepts}, "
            f"candidate {n_concepts_of(cand)} (codes of different SAEs)"
        )
    pairing = _captions_of_all_three(real, base, cand)
    moments = PairedMoments.zeros(n_concepts)
    blocks = iter_paired_blocks(base, cand, pairing, ("xi",), params.block_rows)
    for _, _, base_block, cand_block in blocks:
        moments = moments.add(base_block["xi"], cand_block["xi"])
    n = moments.n
    mean, sd = moments.diff_mean_sd()
    half = NormalDist().inv_cdf(0.5 + params.ci_level / 2) * sd / np.sqrt(max(n, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(sd > 0, mean / sd, 0.0)
    p_k = minimum_effect_p_values(moments, params.min_effect_size, params.min_relative)
    q_k = benjamini_hochberg(p_k)
    return pl.DataFrame(
        {
            "concept": np.arange(n_concepts, dtype=np.int32),
            "n_pairs": np.full(n_concepts, n, dtype=np.int64),
            "energy_base": moments.sum_real_k / max(n, 1),
            "energy_candidate": moments.sum_gen_k / max(n, 1),
            "change": mean,
            "change_ci_low": mean - half,
            "change_ci_high": mean + half,
            "change_effect_size": effect,
            "change_p_value": p_k,
            "change_q_value": q_k,
            "change_significant": q_k < params.alpha,  # NaN is never < α
        }
    )


def _captions_of_all_three(real: RowStore, base: RowStore, cand: RowStore) -> Pairing:
    """Base row and candidate row of every caption whose real, base and candidate images are
    all valid (``Pairing`` with the base as its first side), in base row order."""
    both = pair_generated(base, cand)
    ids = real.image_ids()
    real_valid = {ids[int(r)] for r in np.flatnonzero(real.valid())}
    return both.keep(np.asarray([i in real_valid for i in both.image_ids], dtype=bool))


def _kind() -> pl.Expr:
    flagged = pl.col("significant").fill_null(False)
    kind = pl.when(pl.col("delta_energy") < 0).then(pl.lit("suppressed"))
    return pl.when(flagged).then(kind.otherwise(pl.lit("exaggerated"))).otherwise(None)


def _side(stats: pl.DataFrame, side: str) -> pl.DataFrame:
    return stats.select(
        pl.col("concept").cast(pl.Int32),
        pl.col("significant").fill_null(False).alias(f"{side}_significant"),
        _kind().alias(f"{side}_kind"),
        pl.col("delta_energy").alias(f"{side}_delta_energy"),
        pl.col("delta").alias(f"{side}_delta"),
        pl.col("q_value").alias(f"{side}_q_value"),
    )


def blindspot_changes(
    real_codes: Codes,
    base_codes: Codes,
    cand_codes: Codes,
    base_stats: pl.DataFrame,
    cand_stats: pl.DataFrame,
    params: BlindspotParams,
) -> pl.DataFrame:
    """One row per concept: its status between base and candidate and the paired change (see
    the module docstring; columns ``CHANGES_COLUMNS``). ``base_stats`` / ``cand_stats`` are the
    two sides' ``concept_stats``; when they carry ``sae_version`` it must be the same SAE."""
    versions = {
        v
        for df in (base_stats, cand_stats)
        if "sae_version" in df.columns
        for v in df["sae_version"]
    }
    if len(versions) > 1:
        raise ValueError(
            f"base and candidate concept_stats come from different SAEs {sorted(versions)}: "
            "re-materialise both on the current SAE"
        )
    change = paired_change(real_codes, base_codes, cand_codes, params)
    df = change.join(_side(base_stats, "base"), on="concept", how="left").join(
        _side(cand_stats, "candidate"), on="concept", how="left"
    )
    base_k, cand_k = pl.col("base_kind"), pl.col("candidate_kind")
    same = cand_k.is_not_null() & (base_k == cand_k).fill_null(False)
    sig = pl.col("change_significant")

    def away(kind: pl.Expr) -> pl.Expr:  # significant, away from zero for this kind
        down, up = pl.col("change") < 0, pl.col("change") > 0
        return sig & (((kind == "suppressed") & down) | ((kind == "exaggerated") & up))

    def towards(kind: pl.Expr) -> pl.Expr:
        down, up = pl.col("change") < 0, pl.col("change") > 0
        return sig & (((kind == "suppressed") & up) | ((kind == "exaggerated") & down))

    status = (
        pl.when(same & away(cand_k))
        .then(pl.lit("worsened"))
        .when(same & towards(cand_k))
        .then(pl.lit("improved"))
        .when(same)
        .then(pl.lit("persisting"))
        .when(cand_k.is_not_null() & away(cand_k))
        .then(pl.lit("new"))
        .when(base_k.is_not_null() & towards(base_k))
        .then(pl.lit("resolved"))
        .when(cand_k.is_not_null() | base_k.is_not_null())
        .then(pl.lit("borderline"))
        .otherwise(pl.lit("unchanged"))
    )
    return df.with_columns(status=status, kind=pl.coalesce(cand_k, base_k)).select(CHANGES_COLUMNS)


def regressions(changes: pl.DataFrame, fail_on: Sequence[str] | str) -> pl.DataFrame:
    """The rows of a ``blindspot_changes`` frame that ``fail_on`` calls regressions: a token
    ``status`` matches that status of any kind, ``status-kind`` only that kind."""
    tokens = parse_fail_on(list(fail_on) if not isinstance(fail_on, str) else fail_on)
    if not tokens or changes.is_empty():
        return changes.head(0)
    match = pl.lit(False)
    for token in tokens:
        status, _, kind = token.partition("-")
        hit = pl.col("status") == status
        match = match | (hit & (pl.col("kind") == kind) if kind else hit)
    return changes.filter(match.fill_null(False))


def status_counts(changes: pl.DataFrame) -> dict[str, int]:
    """Concepts per status (every status, zeros included), and per ``status-kind``."""
    counts = {s: int((changes["status"] == s).sum()) for s in CHANGE_STATUSES}
    for s in CHANGE_STATUSES[:-1]:
        for k in BLINDSPOT_KINDS:
            n = int(((changes["status"] == s) & (changes["kind"] == k)).sum())
            if n:
                counts[f"{s}-{k}"] = n
    return counts


def change_preview(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The changed concepts (status other than unchanged) of several comparisons, with the
    columns a reader looks at first."""
    cols = ["comparison", "concept", "status", "kind", "change", "change_ci_low"]
    cols += ["change_ci_high", "change_q_value"]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames).filter(pl.col("status") != "unchanged").select(cols)

"""Model-specific blindspots: what one model cannot draw that the other models can.

Every real model differs from photos globally (a shared style, a shared training set), so a
model's flags against the real set mix what all models miss with what this model alone misses.
With two or more models prompted with the same captions, each concept's change is also tested
against the other models' consensus, paired per caption:

    a_i = ξ_k(x′_i) of this model,   b_i = median over the other models of ξ_k(x′_i),

for each caption i every model has a valid image of; the same minimum-effect test as the
verdict against the real set (``significance``: margins ``min_effect_size`` on d_z and
``min_relative`` on (E_a − E_b)/(E_a + E_b)), Benjamini–Hochberg over the concepts at ``alpha``.

A flagged concept is ``specific`` when this test is significant in the same direction as its
change against the real set: the model loses (or adds) the concept beyond what the others do.
A flagged concept that is not specific is *shared*: its change is within what the other models'
consensus shows for the same captions. With a single model there is no consensus, and the
columns are null. Null control models are left out of every consensus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.stats.reading import (
    I64,
    iter_blocks,
    n_concepts_of,
    open_store,
    read_caption_means,
    sample_groups,
    samples_matrix,
)
from blindspot_assets.stats.scores import benjamini_hochberg
from blindspot_assets.stats.significance import PairedMoments, minimum_effect_p_values
from blindspot_assets.store.rowstore import RowStore

SPECIFIC_COLUMNS = (
    "concept", "specific_n_pairs", "specific_relative", "specific_effect_size",
    "specific_p_value", "specific_q_value",
)  # fmt: skip


def consensus_moments(
    model_codes: str | Path | RowStore,
    other_codes: Sequence[str | Path | RowStore],
    block_rows: int = 1024,
) -> PairedMoments:
    """Paired moments of (consensus b_i as "real", this model a_i as "generated") over the
    captions every store has a valid row for, streamed ``block_rows`` captions at a time."""
    if not other_codes:
        raise ValueError("a consensus needs at least one other model")
    model = open_store(model_codes)
    others = [open_store(o) for o in other_codes]
    n_concepts = n_concepts_of(model)
    index = sample_groups(model, "model")
    other_index = [sample_groups(o, "other model") for o in others]
    common = [
        i for i in sorted(index, key=lambda i: index[i][0]) if all(i in o for o in other_index)
    ]
    rows, samples = samples_matrix([index[i] for i in common])
    other_rows = [samples_matrix([o[i] for i in common]) for o in other_index]
    moments = PairedMoments.zeros(n_concepts)
    for start, stop in iter_blocks(len(common), block_rows):
        mine = _means(model, rows, samples, start, stop)
        theirs = np.stack(
            [_means(o, r, m, start, stop) for o, (r, m) in zip(others, other_rows, strict=True)]
        )
        moments = moments.add(np.median(theirs, axis=0), mine)
    return moments


def _means(store: RowStore, rows: I64, samples: I64 | None, start: int, stop: int) -> np.ndarray:
    """ξ of captions ``start:stop``, each a caption's mean over its samples."""
    part = None if samples is None else samples[start:stop]
    return read_caption_means(store, ("xi",), rows[start:stop], part)["xi"]


def specific_changes(
    model_codes: str | Path | RowStore,
    other_codes: Sequence[str | Path | RowStore],
    min_effect_size: float,
    min_relative: float,
    block_rows: int = 1024,
) -> pl.DataFrame:
    """One row per concept: the model's change against the consensus of ``other_codes`` (see
    the module docstring); ``specific_q_value`` is Benjamini–Hochberg over the concepts."""
    moments = consensus_moments(model_codes, other_codes, block_rows)
    p = minimum_effect_p_values(moments, min_effect_size, min_relative)
    mean, sd = moments.diff_mean_sd()
    total = moments.sum_gen_k + moments.sum_real_k
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(total > 0, (moments.sum_gen_k - moments.sum_real_k) / total, 0.0)
        effect = np.where(sd > 0, mean / sd, 0.0)
    return pl.DataFrame(
        {
            "concept": np.arange(p.size, dtype=np.int32),
            "specific_n_pairs": np.full(p.size, moments.n, dtype=np.int64),
            "specific_relative": relative,
            "specific_effect_size": effect,
            "specific_p_value": p,
            "specific_q_value": benjamini_hochberg(p),
        }
    ).select(SPECIFIC_COLUMNS)


def with_specific(
    flagged: pl.DataFrame, specific: pl.DataFrame | None, alpha: float
) -> pl.DataFrame:
    """``flagged`` (a blindspots partition) with the specific columns and ``specific``: the
    consensus test significant in the direction of the flag; null without a consensus."""
    if specific is None:
        empty = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in _SCHEMA.items()]
        return flagged.with_columns(*empty)
    joined = flagged.join(specific, on="concept", how="left")
    same_direction = (pl.col("specific_relative") < 0) == (pl.col("kind") == "suppressed")
    return joined.with_columns(
        specific=(pl.col("specific_q_value") < alpha) & same_direction & pl.col("significant")
    )


_SCHEMA = {
    "specific_n_pairs": pl.Int64,
    "specific_relative": pl.Float64,
    "specific_effect_size": pl.Float64,
    "specific_p_value": pl.Float64,
    "specific_q_value": pl.Float64,
    "specific": pl.Boolean,
}

"""Do flagged concepts replicate in a second dictionary? SAE stability of a blindspot.

An SAE trained again with another seed learns a somewhat different dictionary. A blindspot
that is a property of the model shows up in both: the flagged concept has a close match in the
second dictionary (cosine of dictionary rows), and the matched concept's energy moves the same
way, beyond the same margins (the minimum-effect test of ``significance``, Benjamini–Hochberg
over the flagged concepts). A blindspot found in one dictionary only is weaker evidence.

Streams the paired feature stores once; only the matched concepts' energies are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reading import iter_paired_blocks, open_store, pair_rows
from blindspot_assets.stats.scores import benjamini_hochberg
from blindspot_assets.stats.significance import PairedMoments, minimum_effect_p_values
from blindspot_assets.store.rowstore import RowStore

MIN_MATCH_COSINE = 0.5  # below this, the second dictionary has no counterpart of the concept
DENSE_BUDGET = 1 << 24  # floats of dense codes alive at once

REPLICATION_COLUMNS = ("replicate_concept", "replicate_cosine", "replicate_q_value", "replicated")


def without_replication(flagged: pl.DataFrame) -> pl.DataFrame:
    """The replication columns, null: no replicate SAE was trained (``sae.replicate_seed``)."""
    return flagged.with_columns(
        replicate_concept=pl.lit(None, pl.Int32),
        replicate_cosine=pl.lit(None, pl.Float64),
        replicate_q_value=pl.lit(None, pl.Float64),
        replicated=pl.lit(None, pl.Boolean),
    )


@torch.no_grad()
def match_concepts(
    dict_a_cd: torch.Tensor, dict_b_cd: torch.Tensor, concepts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``concepts`` (rows of A), the closest row of B by cosine, and the cosine."""
    a = torch.nn.functional.normalize(dict_a_cd[torch.as_tensor(concepts)].float(), dim=1)
    b = torch.nn.functional.normalize(dict_b_cd.float(), dim=1)
    best, idx = (a @ b.T).max(dim=1)
    return idx.numpy().astype(np.int64), best.numpy().astype(np.float64)


@torch.no_grad()
def _energies(
    model: RelaxedArchetypalSAE, tokens_mtd: np.ndarray, cols: torch.Tensor
) -> np.ndarray:
    m, t, d = tokens_mtd.shape
    per_pass = max(1, DENSE_BUDGET // (t * model.n_concepts))
    out = np.zeros((m, cols.numel()), np.float64)
    for a in range(0, m, per_pass):
        x = torch.from_numpy(np.asarray(tokens_mtd[a : a + per_pass], np.float32))
        z = model.encode(x.reshape(-1, d))[:, cols]
        out[a : a + per_pass] = z.view(x.shape[0], t, -1).sum(dim=1).double().numpy()
    return out


def replication(
    flagged: pl.DataFrame,
    model_a: RelaxedArchetypalSAE,
    model_b: RelaxedArchetypalSAE,
    real_features: str | Path | RowStore,
    gen_features: str | Path | RowStore,
    params: BlindspotParams,
    block_rows: int = 64,
) -> pl.DataFrame:
    """``flagged`` (``concept``, ``kind``) with the replicate SAE's evidence joined:
    ``replicate_concept``, ``replicate_cosine``, ``replicate_q_value`` and ``replicated`` (a
    match of cosine ≥ ``MIN_MATCH_COSINE`` whose energy is significant in the same direction).
    """
    if flagged.is_empty():
        return without_replication(flagged)
    concepts = flagged["concept"].to_numpy().astype(np.int64)
    with torch.no_grad():
        match_c, cosine_c = match_concepts(model_a.dictionary(), model_b.dictionary(), concepts)
    cols = torch.as_tensor(match_c)
    real, gen = open_store(real_features), open_store(gen_features)
    pairing = pair_rows(real, gen)
    moments = PairedMoments.zeros(len(concepts))
    model_b.eval()

    def energies(block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"xi": _energies(model_b, block["tokens"], cols)}

    for _, _, real_block, gen_block in iter_paired_blocks(
        real, gen, pairing, ("tokens",), block_rows, per_image=energies
    ):
        moments = moments.add(real_block["xi"], gen_block["xi"])
    p_c = minimum_effect_p_values(moments, params.min_effect_size, params.min_relative)
    q_c = benjamini_hochberg(p_c)
    direction_c = np.sign(moments.sum_gen_k - moments.sum_real_k)
    wanted_c = np.where(flagged["kind"].to_numpy() == "suppressed", -1.0, 1.0)
    replicated = (q_c < params.alpha) & (direction_c == wanted_c) & (cosine_c >= MIN_MATCH_COSINE)
    return flagged.with_columns(
        replicate_concept=pl.Series(match_c.astype(np.int32)),
        replicate_cosine=pl.Series(cosine_c),
        replicate_q_value=pl.Series(q_c),
        replicated=pl.Series(replicated),
    )

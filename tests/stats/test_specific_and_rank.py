"""Model-specific changes against the other models' consensus, and the rank by how much of a
concept is lost: checked against formulas written out here, on planted stores."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats as sps

from blindspot_assets.stats.concepts import flag_blindspots
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.significance import PairedMoments, relative_lower_bound
from blindspot_assets.stats.specific import specific_changes, with_specific
from blindspot_assets.store.layout import code_arrays
from blindspot_assets.store.rowstore import RowStore


def _codes(path, xi: np.ndarray, ids: list[str]) -> RowStore:
    """A finished code store holding per-image energies ``xi`` (n × c)."""
    n, c = xi.shape
    store = RowStore.create_or_resume(path, ids, code_arrays(4, c, 2), {"fingerprint": "t"})
    arrays = {
        "xi": xi.astype(np.float32),
        "nfire": (xi > 0).astype(np.uint16),
        "token_idx": np.zeros((n, 4, 2), np.int32),
        "token_val": np.zeros((n, 4, 2), np.float16),
    }
    store.write_block(0, arrays, np.ones(n, bool), ["ok"] * n)
    store.finish()
    return store


def test_relative_lower_bound_matches_the_delta_method_written_out():
    rng = np.random.default_rng(0)
    real = rng.gamma(2.0, 1.0, size=(400, 3))
    gen = real * np.array([0.3, 1.0, 1.5]) + rng.gamma(1.0, 0.2, size=(400, 3))
    moments = PairedMoments.zeros(3).add(real, gen)
    got = relative_lower_bound(moments, 0.95)
    for k in range(3):
        g, r = gen[:, k].astype(np.float32), real[:, k].astype(np.float32)
        mg, mr, n = g.mean(), r.mean(), g.size
        cov = np.cov(g, r, ddof=1)
        grad = np.array([2 * mr, -2 * mg]) / (mg + mr) ** 2
        se = np.sqrt(grad @ cov @ grad / n)
        want = max(0.0, abs((mg - mr) / (mg + mr)) - sps.norm.ppf(0.975) * se)
        assert got[k] == np.float64(got[k]) and abs(got[k] - want) < 1e-5, (k, got[k], want)


def test_a_rare_concept_that_is_gone_ranks_above_a_mild_shift_of_a_frequent_one():
    """Concept 0 fires in 5 % of pairs and is gone; concept 1 fires everywhere and drops by
    20 %: by |d_z| the frequent one comes first, by ``rank`` the gone one does."""
    rng = np.random.default_rng(1)
    n = 1000
    real = np.zeros((n, 2))
    real[:50, 0] = rng.gamma(4.0, 1.0, 50)
    real[:, 1] = rng.gamma(8.0, 1.0, n)
    gen = np.stack([np.zeros(n), real[:, 1] * 0.8 + rng.normal(0, 0.1, n)], axis=1)
    moments = PairedMoments.zeros(2).add(real, gen)
    mean, sd = moments.diff_mean_sd()
    table = pl.DataFrame(
        {
            "concept": [0, 1],
            "delta": [0.2, 0.3],
            "delta_energy": gen.mean(0) - real.mean(0),
            "relative": (gen.mean(0) - real.mean(0)) / (gen.mean(0) + real.mean(0)),
            "effect_size": mean / sd,
            "significant": [True, True],
            "change_lcb": relative_lower_bound(moments, 0.95),
        }
    )
    flagged = flag_blindspots(table, BlindspotParams())
    assert abs(table["effect_size"][0]) < abs(table["effect_size"][1])  # d_z would rank 1 first
    assert flagged.sort("rank")["concept"].to_list() == [0, 1]
    assert flagged.sort("rank_effect_size")["concept"].to_list() == [1, 0]


def test_specific_finds_what_only_one_model_misses_and_not_what_all_share(tmp_path):
    """Four models over 600 captions: all share a 30 % loss of concept 0 (a global style),
    model a alone loses concept 1. Against the consensus of b, c and d, a's concept 1 is
    specific and concept 0 is not; b against (a, c, d) has no specific loss (the median of
    three all but ignores the one model that lost concept 1: b looks a few percent richer in
    it, never poorer). The consensus is the median per caption, written out here."""
    rng = np.random.default_rng(2)
    n, ids = 600, [f"im{i}" for i in range(600)]
    base = rng.gamma(3.0, 1.0, size=(n, 3))

    def model(loss1: float, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).gamma(2.0, 0.3, size=(n, 3))
        return base * np.array([0.7, 1.0 - loss1, 1.0]) + noise

    xi = {"a": model(1.0, 10), "b": model(0.0, 11), "c": model(0.0, 12), "d": model(0.0, 13)}
    stores = {k: _codes(tmp_path / f"{k}.zarr", v, ids) for k, v in xi.items()}
    a = specific_changes(stores["a"], [stores["b"], stores["c"], stores["d"]], 0.2, 0.1)
    consensus = np.median(np.stack([xi[k] for k in "bcd"]).astype(np.float32), axis=0)
    d = xi["a"].astype(np.float32) - consensus
    want_dz = d.mean(0) / d.std(0, ddof=1)
    assert np.allclose(a["specific_effect_size"].to_numpy(), want_dz, atol=1e-4)
    assert a["specific_q_value"][1] < 0.01 and a["specific_relative"][1] < -0.5
    assert a["specific_q_value"][0] > 0.05  # the shared loss is not specific
    b = specific_changes(stores["b"], [stores["a"], stores["c"], stores["d"]], 0.2, 0.1)
    assert b["specific_q_value"][0] > 0.05 and b["specific_q_value"][2] > 0.05
    assert 0 < b["specific_relative"][1] < 0.1

    flagged = pl.DataFrame(
        {"concept": [0, 1], "kind": ["suppressed", "suppressed"], "significant": [True, True]}
    )
    marked = with_specific(flagged, a, alpha=0.05)
    assert marked["specific"].to_list() == [False, True]
    assert with_specific(flagged, None, 0.05)["specific"].to_list() == [None, None]


def test_flags_kinds_and_both_ranks_of_a_table_written_out():
    """δ outside [0.1, 0.9] (strictly) or significant is flagged; significant first, then by
    change_lcb, then |d_z| (rank), or by |d_z| then |ΔE| (rank_effect_size); nulls last."""
    table = pl.DataFrame(
        {
            "concept": [0, 1, 2, 3, 4, 5, 6, 7],
            "delta": [0.5, 0.05, 0.3, 0.95, 0.92, 0.5, 0.1, 0.9],
            "delta_energy": [0.0, -3.0, -1.0, 3.0, 2.0, 0.0, -2.0, 2.0],
            "significant": [False, False, True, True, None, True, False, False],
            "effect_size": [0.0, -0.5, -2.0, 1.0, None, 0.0, -1.0, 1.0],
            "change_lcb": [0.0, 0.2, 0.3, 0.6, None, 0.0, 0.1, 0.1],
        }
    )
    others = ["relative", "delta_energy_ci_low", "delta_energy_ci_high", "p_value", "q_value"]
    others += ["energy_real", "energy_gen", "image_freq_real", "image_freq_gen", "n_pairs"]
    table = table.with_columns(pl.lit(0.5).alias(c) for c in others)
    flagged = flag_blindspots(table, BlindspotParams()).sort("concept")
    assert flagged["concept"].to_list() == [1, 2, 3, 4, 5]
    assert flagged["kind"].to_list() == ["suppressed", "suppressed"] + ["exaggerated"] * 3
    assert flagged["rank"].to_list() == [4, 2, 1, 5, 3]
    assert flagged["rank_effect_size"].to_list() == [4, 1, 2, 5, 3]
    assert flagged["paper_verdict"].to_list() == [True, False, True, True, False]
    assert flagged["significant"].to_list() == [False, True, True, False, True]
    assert flagged.schema["rank"] == flagged.schema["rank_effect_size"] == pl.Int32
    assert flagged.columns == [
        "rank", "concept", "kind", "delta", "delta_energy", "relative", "change_lcb",
        "effect_size", "delta_energy_ci_low", "delta_energy_ci_high", "p_value", "q_value",
        "paper_verdict", "significant", "energy_real", "energy_gen", "image_freq_real",
        "n_pairs", "rank_effect_size",
    ]  # fmt: skip

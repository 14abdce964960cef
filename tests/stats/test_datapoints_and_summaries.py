"""Datapoint deltas, per-model summaries and the model-vs-variant comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from blindspot_assets.stats import (
    BlindspotParams,
    compare_variants,
    compute_concept_stats,
    compute_datapoint_deltas,
    delta_histogram,
    frequency_vs_relative,
    l2_histograms,
    model_summaries,
    relative_correlations,
)
from blindspot_assets.stats.summaries import skewness, spearman
from tests.stats.conftest import write_codes

PARAMS = BlindspotParams(n_bootstrap=200, n_permutations=200, block_rows=16)


def test_datapoint_deltas_hand_case(tmp_path: Path) -> None:
    real = np.array([[3.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    gen = np.array([[0.0, 4.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    ids = ["a", "b", "c"]
    r = write_codes(tmp_path / "r.zarr", ids, real, chunk_rows=2)
    g = write_codes(tmp_path / "g.zarr", ids[::-1], gen[::-1].copy(), chunk_rows=2)
    out = compute_datapoint_deltas(r, g, top_n=2, block_rows=2)
    f64, concepts = pl.Float64, pl.List(pl.Int32)  # the table's types, as documented
    assert dict(out.schema) == {
        "image_id": pl.String, "sample": pl.Int32, "gen_image_id": pl.String, "l2": f64,
        "norm_real": f64, "norm_gen": f64, "l2_relative": f64,
        "missing_concepts": concepts, "missing_values": pl.List(f64),
        "added_concepts": concepts, "added_values": pl.List(f64),
    }  # fmt: skip
    a, b, c = out.sort("image_id").iter_rows(named=True)
    assert a["l2"] == 5.0
    assert a["norm_real"] == pytest.approx(np.sqrt(10.0), rel=1e-6)
    assert a["norm_gen"] == pytest.approx(np.sqrt(17.0), rel=1e-6)
    assert a["missing_concepts"] == [0] and a["missing_values"] == [-3.0]
    assert a["added_concepts"] == [1] and a["added_values"] == [4.0]
    assert a["l2_relative"] == pytest.approx(5.0 / (np.sqrt(10.0) + np.sqrt(17.0)))
    assert b["l2"] == 0.0 and b["missing_concepts"] == [] and b["added_concepts"] == []
    assert c["l2_relative"] == 0.0


def test_datapoint_deltas_list_the_largest_changes_first(tmp_path: Path) -> None:
    real = np.array([[5.0, 6.0, 1.0, 3.0, 0.0, 0.0, 2.0, 1.0]])
    d = np.array([[-1.0, -4.0, 2.0, -3.0, 5.0, 0.5, -2.0, 0.0]])
    r = write_codes(tmp_path / "r.zarr", ["a"], real)
    g = write_codes(tmp_path / "g.zarr", ["a"], real + d)
    (row,) = compute_datapoint_deltas(r, g, top_n=3).iter_rows(named=True)
    assert (row["missing_concepts"], row["missing_values"]) == ([1, 3, 6], [-4.0, -3.0, -2.0])
    assert (row["added_concepts"], row["added_values"]) == ([4, 2, 5], [5.0, 2.0, 0.5])
    assert row["l2"] == pytest.approx(np.sqrt((d**2).sum()))
    (row,) = compute_datapoint_deltas(r, g, top_n=20).iter_rows(named=True)
    assert row["missing_concepts"] == [1, 3, 6, 0] and row["added_concepts"] == [4, 2, 5]


def _stats_for(tmp: Path, real: np.ndarray, gen: np.ndarray, name: str) -> pl.DataFrame:
    ids = [f"i{i}" for i in range(real.shape[0])]
    r = write_codes(tmp / f"{name}_r.zarr", ids, real)
    g = write_codes(tmp / f"{name}_g.zarr", ids, gen)
    return compute_concept_stats(r, g, PARAMS)


def test_model_summaries_and_correlations(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, c = 200, 60
    freq_k = np.linspace(0.05, 0.8, c)
    real = ((rng.random((n, c)) < freq_k) * rng.gamma(2.0, 1.0, (n, c))).astype(np.float32)
    # model A suppresses rare concepts; B is a noisy copy of A; C does the opposite
    keep_a = np.clip(freq_k * 1.5, 0.0, 1.0)
    gen_a = (real * (rng.random((n, c)) < keep_a)).astype(np.float32)
    gen_b = (gen_a * rng.uniform(0.8, 1.2, (n, c))).astype(np.float32)
    gen_c = (real * (rng.random((n, c)) < keep_a[::-1])).astype(np.float32)
    stats = {m: _stats_for(tmp_path, real, g, m) for m, g in [("a", gen_a), ("b", gen_b),
                                                              ("c", gen_c)]}  # fmt: skip
    summary = model_summaries(stats, PARAMS)
    assert summary["model"].to_list() == ["a", "b", "c"]
    row_a = summary.row(0, named=True)
    assert row_a["n_pairs"] == n and row_a["n_concepts_active"] == c
    assert row_a["delta_skewness"] == pytest.approx(
        _g1_from_raw_moments(stats["a"]["delta"].to_numpy()), rel=1e-6
    )
    assert row_a["freq_relative_spearman"] > 0.5  # rare concepts lose the most
    assert summary.row(2, named=True)["freq_relative_spearman"] < -0.5
    corr = relative_correlations(stats)
    r = {(x, y): v for x, y, v, _ in corr.iter_rows()}
    assert r[("a", "b")] > 0.8 and r[("a", "c")] < 0.0
    hist = delta_histogram(stats["a"], bins=10)
    assert hist["count"].sum() == c and hist["fraction"].sum() == pytest.approx(1.0)
    bins = frequency_vs_relative(stats["a"], PARAMS, n_bins=4)
    assert bins["n_concepts"].sum() == c
    rel = bins["mean_relative"].to_list()
    assert rel[0] < rel[-1]  # the rarest bin is the most suppressed


def test_variant_comparison_sees_the_variant_stay_closer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n, c = 150, 30
    real = rng.gamma(2.0, 1.0, (n, c)).astype(np.float32)
    ids = [f"i{i}" for i in range(n)]
    base = (real + rng.normal(0, 1.0, (n, c))).astype(np.float32)
    tuned = (real + rng.normal(0, 0.5, (n, c))).astype(np.float32)  # "DPO": closer to real
    r = write_codes(tmp_path / "r.zarr", ids, real)
    d_base = compute_datapoint_deltas(r, write_codes(tmp_path / "b.zarr", ids, base))
    d_tuned = compute_datapoint_deltas(r, write_codes(tmp_path / "t.zarr", ids, tuned))
    out = compare_variants(d_base, d_tuned, PARAMS, "sd15", "sd15_dpo").row(0, named=True)
    assert out["n"] == n and out["mean_diff"] < 0 and out["ci_high"] < 0
    assert out["p_value"] < 1e-6 and out["frac_b_closer"] > 0.9
    hist = l2_histograms({"sd15": d_base, "sd15_dpo": d_tuned}, bins=8)
    assert hist.group_by("model").agg(pl.col("count").sum())["count"].to_list() == [n, n]


def _g1_from_raw_moments(x: np.ndarray) -> float:
    """Fisher–Pearson g1 from the raw moments a_j = mean(x^j), written apart from the library:
    m2 = a2 − a1², m3 = a3 − 3·a1·a2 + 2·a1³, g1 = m3 / m2^1.5."""
    x = np.asarray(x, dtype=np.float64)
    a1, a2, a3 = x.mean(), (x**2).mean(), (x**3).mean()
    return float((a3 - 3 * a1 * a2 + 2 * a1**3) / (a2 - a1**2) ** 1.5)


def test_rank_helpers() -> None:
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 20.0, 40.0])) > 0.9
    # by hand: [0, 0, 0, 10] has mean 2.5, m2 = 75/4, m3 = 375/4, so g1 = 2/√3;
    # [0, 0, 1] has m2 = 2/9, m3 = 2/27, so g1 = 1/√2; mirrored data flips the sign
    assert skewness(np.array([0.0, 0.0, 0.0, 10.0])) == pytest.approx(2 / np.sqrt(3), rel=1e-12)
    assert skewness(np.array([0.0, 0.0, 1.0])) == pytest.approx(1 / np.sqrt(2), rel=1e-12)
    assert skewness(np.array([0.0, 0.0, -1.0])) == pytest.approx(-1 / np.sqrt(2), rel=1e-12)
    assert skewness(np.array([1.0, 2.0, 3.0])) == 0.0

"""Blindspot changes between two generated sets of the same captions (stats/changes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from blindspot_assets.config import ConfigError
from blindspot_assets.stats import BlindspotParams, compute_concept_stats
from blindspot_assets.stats.changes import (
    CHANGES_COLUMNS,
    blindspot_changes,
    paired_change,
    regressions,
    status_counts,
)
from tests.stats import independent as ind
from tests.stats.conftest import write_codes
from tests.stats.synthetic import planted_codes

PARAMS = BlindspotParams(n_bootstrap=50, n_permutations=50, block_rows=64, seed=3)


def _changes(tmp: Path, real: np.ndarray, base: np.ndarray, cand: np.ndarray, ids: list[str]):
    real_p = write_codes(tmp / "real.zarr", ids, real)
    base_p = write_codes(tmp / "base.zarr", ids, base)
    cand_p = write_codes(tmp / "cand.zarr", ids, cand)
    base_stats = compute_concept_stats(real_p, base_p, PARAMS)
    cand_stats = compute_concept_stats(real_p, cand_p, PARAMS)
    out = blindspot_changes(real_p, base_p, cand_p, base_stats, cand_stats, PARAMS)
    return out, base_stats, cand_stats


def test_a_planted_new_suppression_is_new_and_a_regression(tmp_path: Path) -> None:
    world = planted_codes(n=400, c=40, seed=0)
    base = world.xi_gen_nc
    cand = base.copy()
    new = 7  # an ordinary concept the candidate can no longer draw
    cand[:, new] = 0.0
    out, base_stats, cand_stats = _changes(tmp_path, world.xi_real_nc, base, cand, world.image_ids)
    row = out.filter(pl.col("concept") == new).row(0, named=True)
    assert row["status"] == "new"
    assert row["kind"] == "suppressed"
    assert row["change_significant"]
    assert row["change_ci_high"] < 0
    # paired change = ΔE(candidate) − ΔE(base) when both use the same pairs
    expected = cand_stats["delta_energy"] - base_stats["delta_energy"]
    np.testing.assert_allclose(out["change"].to_numpy(), expected.to_numpy(), atol=1e-6)
    # the planted blindspots of the base stay flagged and do not move: persisting
    for concept in (world.gone, world.doubled):
        assert out.filter(pl.col("concept") == concept)["status"].item() == "persisting"
    # the only regression under the default gate is the new suppression
    bad = regressions(out, ("new-suppressed", "new-exaggerated", "worsened"))
    assert bad["concept"].to_list() == [new]
    assert regressions(out, "new-exaggerated").is_empty()
    assert status_counts(out)["new-suppressed"] == 1


def test_paired_change_p_q_and_interval_match_the_written_out_test(tmp_path: Path) -> None:
    """The change's p-value (the minimum-effect test of candidate against base), its
    Benjamini–Hochberg q-value over the concepts and its normal interval, each against scipy on
    the paired values — not against the module's own moments."""
    rng = np.random.default_rng(11)
    n, c = 250, 12
    real = rng.gamma(4.0, 1.0, size=(n, c)).astype(np.float32)
    base = (real + rng.normal(0.0, 0.7, size=(n, c))).astype(np.float32)
    # four unchanged concepts, eight shifted by d_z 0.2 to 0.45 (p-values from 1e-12 to 0.7)
    shift = np.r_[np.zeros(4), np.linspace(0.2, 0.45, 8) * 0.7 * np.tile([-1, 1], 4)]
    cand = (base + shift + rng.normal(0.0, 0.7, size=(n, c))).astype(np.float32)
    ids = [f"img{i:04d}" for i in range(n)]
    paths = [
        write_codes(tmp_path / f"{k}.zarr", ids, x)
        for k, x in zip("rbc", (real, base, cand), strict=True)
    ]
    out = paired_change(*paths, PARAMS)
    b, g = base.astype(np.float64), cand.astype(np.float64)
    p = ind.p_minimum_effect(b, g, PARAMS.min_effect_size, PARAMS.min_relative)
    q = ind.bh(p)
    assert (q < PARAMS.alpha).sum() >= 6 and (q > p).any()  # BH moves some q above its p
    np.testing.assert_allclose(out["change_p_value"].to_numpy(), p, rtol=1e-4)
    np.testing.assert_allclose(out["change_q_value"].to_numpy(), q, rtol=1e-4)
    assert out["change_significant"].to_list() == (q < PARAMS.alpha).tolist()
    d = g - b
    half = ind.stats.norm.ppf(0.5 + PARAMS.ci_level / 2) * d.std(axis=0, ddof=1) / np.sqrt(n)
    np.testing.assert_allclose(out["change"].to_numpy(), d.mean(axis=0), rtol=1e-5, atol=1e-6)
    width = (out["change_ci_high"] - out["change_ci_low"]).to_numpy()
    np.testing.assert_allclose(width, 2 * half, rtol=1e-5)
    effect = d.mean(axis=0) / d.std(axis=0, ddof=1)
    np.testing.assert_allclose(out["change_effect_size"].to_numpy(), effect, rtol=1e-5)
    np.testing.assert_allclose(out["energy_base"].to_numpy(), b.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out["energy_candidate"].to_numpy(), g.mean(axis=0), rtol=1e-5)


def test_worsened_improved_and_resolved(tmp_path: Path) -> None:
    world = planted_codes(n=400, c=40, seed=1)
    base = world.xi_gen_nc.copy()
    base[:, 5] = world.xi_real_nc[:, 5] * 0.5  # suppressed in base
    base[:, 6] = world.xi_real_nc[:, 6] * 2.0  # exaggerated in base
    cand = base.copy()
    cand[:, 5] = world.xi_real_nc[:, 5] * 0.1  # further suppressed: worsened
    cand[:, 6] = world.xi_real_nc[:, 6] * 1.5  # less exaggerated but still flagged: improved
    cand[:, world.gone] = world.xi_real_nc[:, world.gone]  # drawn again: resolved
    out, _, _ = _changes(tmp_path, world.xi_real_nc, base, cand, world.image_ids)
    status = dict(zip(out["concept"], out["status"], strict=True))
    assert status[5] == "worsened"
    assert status[6] == "improved"
    assert status[world.gone] == "resolved"
    assert regressions(out, "worsened")["concept"].to_list() == [5]
    assert regressions(out, ["worsened-exaggerated"]).is_empty()


# (base flag, candidate flag, change of every caption) → status and kind: every branch of the
# status rule, with changes below 1 in size. S, X: flagged suppressed, exaggerated; -: not.
STATUS_TABLE = [
    ("X", "-", +0.5, "borderline", "exaggerated"),  # further exaggerated, no longer flagged
    ("X", "-", -0.5, "resolved", "exaggerated"),
    ("S", "-", +0.5, "resolved", "suppressed"),
    ("S", "-", -0.5, "borderline", "suppressed"),
    ("-", "S", -0.5, "new", "suppressed"),
    ("-", "X", +0.5, "new", "exaggerated"),
    ("-", "S", +0.5, "borderline", "suppressed"),
    ("-", "X", -0.5, "borderline", "exaggerated"),
    ("S", "S", -0.5, "worsened", "suppressed"),
    ("S", "S", +0.5, "improved", "suppressed"),
    ("X", "X", +0.5, "worsened", "exaggerated"),
    ("X", "X", -0.5, "improved", "exaggerated"),
    ("X", "X", 0.0, "persisting", "exaggerated"),
    ("-", "-", 0.0, "unchanged", None),
    ("-", "-", +0.5, "unchanged", None),
    ("S", "X", +0.5, "new", "exaggerated"),
    ("X", "S", -0.5, "new", "suppressed"),
    ("X", "S", 0.0, "borderline", "suppressed"),
]


def _flags(flags: list[str]) -> pl.DataFrame:
    """A side's concept_stats, written out: its flag and the sign of ΔE."""
    energy = {"S": -1.0, "X": 1.0, "-": 0.1}
    return pl.DataFrame(
        {
            "concept": list(range(len(flags))),
            "significant": [f != "-" for f in flags],
            "delta_energy": [energy[f] for f in flags],
            "delta": [0.5] * len(flags),
            "q_value": [0.01 if f != "-" else 0.5 for f in flags],
            "sae_version": "sae:1",
        }
    )


def test_every_status_of_the_rule_on_changes_written_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(40)]
    real = rng.uniform(1.0, 3.0, size=(40, len(STATUS_TABLE)))
    base = real * rng.uniform(0.9, 1.1, size=real.shape)
    change = np.array([row[2] for row in STATUS_TABLE])
    cand = base + change * rng.uniform(0.9, 1.1, size=real.shape)
    sides = {"real": real, "base": base, "cand": cand}
    paths = [write_codes(tmp_path / f"{k}.zarr", ids, x) for k, x in sides.items()]
    out = blindspot_changes(
        *paths, _flags([r[0] for r in STATUS_TABLE]), _flags([r[1] for r in STATUS_TABLE]), PARAMS
    )
    assert out["change_significant"].to_list() == [c != 0 for c in change]
    assert out["status"].to_list() == [row[3] for row in STATUS_TABLE]
    assert out["kind"].to_list() == [row[4] for row in STATUS_TABLE]
    assert out["base_kind"][0] == "exaggerated" and out["candidate_kind"][0] is None
    assert out.columns == list(CHANGES_COLUMNS)


def test_identical_generated_sets_change_nothing(tmp_path: Path) -> None:
    """The null control of the gate: the same generated set on both sides."""
    world = planted_codes(n=300, c=40, seed=2)
    gen = world.xi_gen_nc
    out, base_stats, _ = _changes(tmp_path, world.xi_real_nc, gen, gen.copy(), world.image_ids)
    flagged = set(base_stats.filter(pl.col("significant"))["concept"].to_list())
    assert flagged  # the planted blindspots, flagged on both sides alike
    assert set(out.filter(pl.col("status") == "persisting")["concept"]) == flagged
    assert set(out["status"].unique()) <= {"persisting", "unchanged"}
    assert (out["change"] == 0).all() and not out["change_significant"].any()
    assert regressions(out, ("new-suppressed", "new-exaggerated", "worsened")).is_empty()


def test_only_captions_valid_on_all_three_sides_are_paired(tmp_path: Path) -> None:
    world = planted_codes(n=200, c=12, seed=4)
    ids = world.image_ids
    real_valid = np.ones(len(ids), dtype=bool)
    real_valid[3] = False
    cand_valid = np.ones(len(ids), dtype=bool)
    cand_valid[[10, 11]] = False
    real_p = write_codes(tmp_path / "r.zarr", ids, world.xi_real_nc, valid_n=real_valid)
    base_p = write_codes(tmp_path / "b.zarr", ids[::-1], world.xi_gen_nc[::-1])  # other order
    cand_p = write_codes(tmp_path / "c.zarr", ids, world.xi_gen_nc + 1.0, valid_n=cand_valid)
    stats = compute_concept_stats(real_p, cand_p, PARAMS)
    out = blindspot_changes(real_p, base_p, cand_p, stats, stats, PARAMS)
    assert out["n_pairs"][0] == len(ids) - 3
    np.testing.assert_allclose(out["change"].to_numpy(), 1.0, rtol=1e-6)


def test_different_saes_and_bad_tokens_are_refused(tmp_path: Path) -> None:
    world = planted_codes(n=50, c=8, seed=5)
    paths = [write_codes(tmp_path / f"{n}.zarr", world.image_ids, world.xi_gen_nc) for n in "rbc"]
    stats = compute_concept_stats(paths[0], paths[1], PARAMS)
    with pytest.raises(ValueError, match="different SAEs"):
        blindspot_changes(
            *paths,
            stats.with_columns(sae_version=pl.lit("sae:a")),
            stats.with_columns(sae_version=pl.lit("sae:b")),
            PARAMS,
        )
    with pytest.raises(ConfigError, match="unknown token"):
        regressions(stats.head(0), "new-blurred")


def test_the_report_section_says_whether_the_gate_passes(tmp_path: Path) -> None:
    from blindspot_assets.report.changes import changes_sections
    from blindspot_assets.report.data import Labels

    world = planted_codes(n=200, c=12, seed=6)
    cand = world.xi_gen_nc.copy()
    cand[:, 7] = 0.0
    out, _, _ = _changes(tmp_path, world.xi_real_nc, world.xi_gen_nc, cand, world.image_ids)
    table = out.with_columns(
        comparison=pl.lit("a..b"),
        base=pl.lit("a"),
        candidate=pl.lit("b"),
        base_model_version=pl.lit("v1"),
        candidate_model_version=pl.lit("v2"),
    )
    [(anchor, title, body)] = changes_sections(table, Labels(), ("new-suppressed",))
    assert anchor == "changes-a..b" and title == "Changes a → b"
    assert "Gate fails: 1 regression(s)" in body and "changes-table" in body
    [(_, _, body)] = changes_sections(table, Labels(), ())
    assert "Gate passes" in body
    assert changes_sections(None, Labels(), ("new",)) == []

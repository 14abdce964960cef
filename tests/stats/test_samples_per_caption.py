"""Several generated images per caption: the paired statistics see each caption's mean over its
samples (one pair per caption), datapoint deltas stay per sample, and a set of one image per
caption gives what it always gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from blindspot_assets.stats import BlindspotParams, compute_concept_stats, compute_datapoint_deltas
from blindspot_assets.stats.changes import paired_change
from blindspot_assets.stats.reading import pair_rows
from blindspot_assets.stats.specific import consensus_moments
from blindspot_assets.store.images import sample_image_id
from blindspot_assets.store.rowstore import RowStore
from tests.stats.conftest import write_codes

PARAMS = BlindspotParams(n_bootstrap=100, n_permutations=100, block_rows=7)
N, K = 60, 4


def _world(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """Real images all show concept 0 (energy 2) and concept 1 (energy 1); the model draws
    concept 0 always, concept 1 on exactly one seed in two (samples 0 and 2 of each caption),
    concept 2 never. Rows sample-major like a generated set; one sample invalid."""
    rng = np.random.default_rng(0)
    ids = [f"im{i:02d}" for i in range(N)]
    real = np.zeros((N, 3))
    real[:, 0], real[:, 1], real[:, 2] = 2.0, 1.0, rng.uniform(0.5, 1.5, N)
    gen_ids, gen = [], []
    for s in range(K):
        for i in ids:
            gen_ids.append(sample_image_id(i, s))
            gen.append([2.0, 1.0 if s in (0, 2) else 0.0, 0.0])
    valid = np.ones(N * K, dtype=bool)
    valid[N * 3 + 5] = False  # sample 3 of im05 failed: its mean is over samples 0–2
    r = write_codes(tmp_path / "real.zarr", ids, real)
    g = write_codes(tmp_path / "gen.zarr", gen_ids, np.asarray(gen), valid_n=valid)
    return r, g, real


def test_a_concept_drawn_on_some_seeds_has_a_caption_mean_between_never_and_always(tmp_path):
    r, g, _ = _world(tmp_path)
    pairing = pair_rows(RowStore.open(r), RowStore.open(g))
    assert pairing.n_pairs == N and pairing.n_gen_valid == N * K - 1  # one pair per caption
    stats = compute_concept_stats(r, g, PARAMS).sort("concept")
    always, some, never = stats.iter_rows(named=True)
    assert always["energy_gen"] == pytest.approx(2.0) and always["n_pairs"] == N
    assert not always["significant"]
    # per caption: 2/4 samples, im05 2/3
    assert some["energy_gen"] == pytest.approx((59 * 0.5 + 2 / 3) / N, rel=1e-6)
    assert some["relative"] == pytest.approx((some["energy_gen"] - 1) / (some["energy_gen"] + 1))
    assert some["significant"] and 0 < some["energy_gen"] < some["energy_real"]
    assert never["energy_gen"] == 0.0 and never["relative"] == -1.0
    assert some["image_freq_gen"] == 1.0  # drawn on some seed of every caption
    assert some["nb_fire_gen"] == pytest.approx(some["energy_gen"] * N, rel=1e-6)


def test_one_sample_per_caption_is_what_it_always_was(tmp_path):
    """Only sample 0 of each caption: the same numbers as a set of one image per caption."""
    r, g, _ = _world(tmp_path)
    store = RowStore.open(g)
    xi = np.asarray(store.array("xi")[:N])
    ids = [f"im{i:02d}" for i in range(N)]
    single = write_codes(tmp_path / "single.zarr", ids, xi)
    plain = compute_concept_stats(r, single, PARAMS)
    assert pair_rows(RowStore.open(r), RowStore.open(single)).gen_samples is None
    assert plain["energy_gen"].to_list() == [2.0, 1.0, 0.0]
    assert plain["nb_fire_gen"].dtype == pl.Int64


def test_datapoint_deltas_are_per_sample(tmp_path):
    r, g, real = _world(tmp_path)
    out = compute_datapoint_deltas(r, g, top_n=3, block_rows=9)
    assert out.height == N * K - 1
    first = out.filter(pl.col("image_id") == "im00").sort("sample")
    assert first["sample"].to_list() == [0, 1, 2, 3]
    assert first["gen_image_id"].to_list() == ["im00", "im00~s1", "im00~s2", "im00~s3"]
    expected = [np.sqrt(real[0, 2] ** 2 + (1.0 - c) ** 2) for c in (1, 0, 1, 0)]
    assert first["l2"].to_list() == pytest.approx(expected, rel=1e-6)
    assert out.filter(pl.col("image_id") == "im05")["sample"].sort().to_list() == [0, 1, 2]


def test_changes_and_consensus_compare_caption_means(tmp_path):
    """Two generated sets of several samples each are paired per caption, never sample by
    sample: a base drawing concept 1 on 2 of 4 seeds against a candidate drawing it always."""
    r, g, _ = _world(tmp_path)
    ids = [f"im{i:02d}" for i in range(N)]
    cand_ids = [sample_image_id(i, s) for s in range(2) for i in ids]
    cand = write_codes(tmp_path / "cand.zarr", cand_ids, np.tile([2.0, 1.0, 0.0], (2 * N, 1)))
    change = paired_change(r, g, cand, PARAMS).sort("concept")
    assert change["n_pairs"].to_list() == [N] * 3
    assert change["change"].to_list() == pytest.approx([0.0, 1 - (59 * 0.5 + 2 / 3) / N, 0.0])
    moments = consensus_moments(cand, [g], block_rows=11)
    assert moments.n == N
    assert moments.sum_real_k[1] == pytest.approx(59 * 0.5 + 2 / 3, rel=1e-6)

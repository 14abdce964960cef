"""Planted exact and near copies are found; ordinary generations are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blindspot_assets.stats import memorization_candidates
from tests.stats.conftest import write_features


def test_planted_copies_are_memorisation_candidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_real, n_gen, t, d = 300, 120, 3, 64
    real = rng.normal(size=(n_real, t, d)).astype(np.float32)
    # like web data, the real set has near-duplicates of its own: they set the threshold
    real[250:] = real[150:200] + rng.normal(scale=0.3, size=(50, t, d))
    real_ids = [f"r{i:04d}" for i in range(n_real)]
    # ordinary generations: their prompt's image plus a lot of variation
    gen = (real[:n_gen] + rng.normal(scale=5.0, size=(n_gen, t, d))).astype(np.float32)
    gen_ids = real_ids[:n_gen]
    gen[3] = real[3]  # exact copy of its own pair
    gen[7] = real[130] + rng.normal(scale=0.02, size=(t, d))  # near copy of another image
    gen[9, 1:] = real[9, 1:]  # patch tokens copied but not the CLS token: not a candidate
    r = write_features(tmp_path / "real.zarr", real_ids, real, chunk_rows=16)
    g = write_features(tmp_path / "gen.zarr", gen_ids, gen, chunk_rows=16)
    found = memorization_candidates(r, g, calibration_quantile=0.01, block_rows=64)
    assert sorted(found["gen_image_id"].to_list()) == [real_ids[3], real_ids[7]]
    exact = found.filter(gen_image_id=real_ids[3]).row(0, named=True)
    near = found.filter(gen_image_id=real_ids[7]).row(0, named=True)
    assert exact["nearest_real_id"] == real_ids[3] and exact["is_own_pair"]
    assert exact["distance"] < 1e-6
    assert near["nearest_real_id"] == real_ids[130] and not near["is_own_pair"]
    assert near["distance"] < near["threshold"]
    # the same with everything re-read per block (no feature cache) and every row returned
    every = memorization_candidates(r, g, block_rows=32, max_cached_bytes=0, all_rows=True)
    assert every.height == n_gen and every["is_candidate"].sum() == 2
    assert set(every.filter("is_candidate")["gen_image_id"]) == {real_ids[3], real_ids[7]}

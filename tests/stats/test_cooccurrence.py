"""Concept co-occurrence: planted co-firing pairs come out as top partners, streamed in blocks."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from blindspot_assets.stats.cooccurrence import accumulator_bytes, compute_cooccurrence
from blindspot_assets.store.layout import code_arrays
from blindspot_assets.store.rowstore import RowStore
from tests.stats.conftest import write_codes

PAIRS = ((0, 1), (2, 3), (4, 5))  # planted: always on the same tokens


def _write_token_codes(
    path: Path, n_images: int, n_tokens: int, c: int, k_max: int, seed: int = 0
) -> np.ndarray:
    """A codes store whose tokens fire random concepts, and the planted pairs together.
    Returns the dense token codes (images × tokens, c) for a brute-force check."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_images, n_tokens, c), np.float32)
    noise = rng.random((n_images, n_tokens, c)) < 1.5 / c
    dense[noise] = rng.uniform(0.2, 1.0, size=int(noise.sum()))
    for a, b in PAIRS:
        on = rng.random((n_images, n_tokens)) < 0.15
        dense[on, a] = rng.uniform(0.5, 1.5, size=int(on.sum()))
        dense[on, b] = dense[on, a] * rng.uniform(0.8, 1.2, size=int(on.sum()))
    dense = dense.astype(np.float16).astype(np.float32)  # what the store keeps
    order = np.argsort(-dense, axis=2)[:, :, :k_max]
    top = np.take_along_axis(dense, order, axis=2)
    kept = np.zeros_like(dense)  # what the store can hold: k_max codes a token
    np.put_along_axis(kept, order, top, axis=2)
    _write_sparse(path, np.where(top > 0, order, -1), top, c)
    return kept


def _write_sparse(path: Path, idx: np.ndarray, val: np.ndarray, c: int) -> None:
    """A codes store of token codes ``idx`` / ``val`` (images × tokens × k_max, -1: none)."""
    n_images, n_tokens, k_max = idx.shape
    dense = np.zeros((n_images, n_tokens, c), np.float32)
    i, t, k = np.nonzero(idx >= 0)
    dense[i, t, idx[i, t, k]] = val[i, t, k]
    ids = [f"img{i:04d}" for i in range(n_images)]
    store = RowStore.create_or_resume(
        path, ids, code_arrays(n_tokens, c, k_max), {"fingerprint": "test"}, chunk_rows=8
    )
    data = {
        "xi": dense.sum(axis=1),
        "nfire": (dense > 0).sum(axis=1).astype(np.uint16),
        "token_idx": idx.astype(np.int32),
        "token_val": val.astype(np.float16),
    }
    store.write_block(0, data, np.ones(n_images, bool), ["ok"] * n_images)
    store.finish()


def _brute_force(z: np.ndarray) -> np.ndarray:
    gram = z.T.astype(np.float64) @ z.astype(np.float64)
    norm = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = gram / np.outer(norm, norm)
    np.fill_diagonal(cos, 0.0)
    return np.nan_to_num(cos)


@pytest.mark.parametrize("over", ["tokens", "images"])
def test_planted_pairs_are_top_partners_and_blocks_agree(tmp_path, over):
    c = 24
    dense = _write_token_codes(tmp_path / "codes.zarr", 40, 6, c, k_max=8)
    small = compute_cooccurrence(tmp_path / "codes.zarr", over=over, top=3, block=5, block_rows=7)
    whole = compute_cooccurrence(tmp_path / "codes.zarr", over=over, top=3, block=c)
    assert small.passes == 1 + 5 and whole.passes == 2
    # the accumulators grow with the block: 5 of the c concepts at a time hold 5 / c as much
    assert small.accumulator_bytes * c == whole.accumulator_bytes * 5
    t = small.table
    cols = ["concept", "rank", "partner", "n_both"]
    assert t.select(cols).equals(whole.table.select(cols))
    np.testing.assert_allclose(t["cosine"].to_numpy(), whole.table["cosine"].to_numpy(), rtol=1e-5)
    first = t.filter(pl.col("rank") == 1)
    partner_of = dict(zip(first["concept"].to_list(), first["partner"].to_list(), strict=True))
    for a, b in PAIRS:
        assert partner_of[a] == b and partner_of[b] == a
    # Exact against ZᵀZ computed densely.
    z = dense.reshape(-1, c) if over == "tokens" else dense.sum(axis=1)
    cos = _brute_force(z)
    for row in t.iter_rows(named=True):
        assert row["cosine"] == pytest.approx(cos[row["concept"], row["partner"]], rel=1e-5)
        n_both = int(((z[:, row["concept"]] > 0) & (z[:, row["partner"]] > 0)).sum())
        assert row["n_both"] == n_both
    # Ranked by cosine, highest first; the best partner is the dense argmax.
    for concept, part in t.group_by("concept"):
        assert np.all(np.diff(part.sort("rank")["cosine"].to_numpy()) <= 1e-12)
        assert int(part.sort("rank")["partner"][0]) == int(np.argmax(cos[concept[0]]))
    assert set(t["over"].unique()) == {over}


def test_memory_is_bounded_by_the_block(tmp_path):
    c = 3000  # a dense c × c float64 matrix: 72 MB
    _write_token_codes(tmp_path / "codes.zarr", 16, 5, c, k_max=8)
    tracemalloc.start()
    result = compute_cooccurrence(tmp_path / "codes.zarr", top=2, block=100, block_rows=8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.accumulator_bytes == accumulator_bytes(100, c)
    # measured: the accumulators said are really held (numpy-owned, seen by tracemalloc), and
    # the peak stays far below the dense c × c float64 matrix
    assert result.accumulator_bytes <= peak < 8 * c * c / 8, f"peak {peak / 1e6:.1f} MB"
    first = result.table.filter(pl.col("rank") == 1)
    partner_of = dict(zip(first["concept"].to_list(), first["partner"].to_list(), strict=True))
    assert all(partner_of[a] == b for a, b in PAIRS)


def test_ten_partners_unless_told(tmp_path: Path) -> None:
    xi = np.arange(1.0, 37.0, dtype=np.float32).reshape(3, 12)  # every pair co-fires
    write_codes(tmp_path / "codes.zarr", ["a", "b", "c"], xi)
    t = compute_cooccurrence(tmp_path / "codes.zarr", over="images").table
    assert t.height == 12 * 10 and t["rank"].max() == 10


def test_bad_arguments(tmp_path):
    _write_token_codes(tmp_path / "codes.zarr", 4, 3, 8, k_max=8)
    with pytest.raises(ValueError, match="over must be"):
        compute_cooccurrence(tmp_path / "codes.zarr", over="pixels")
    with pytest.raises(ValueError, match="≥ 1"):
        compute_cooccurrence(tmp_path / "codes.zarr", block=0)


def test_columns_of_a_small_example_worked_by_hand(tmp_path: Path) -> None:
    """Five images, three concepts, over images: ZᵀZ, cosines, counts worked out by hand."""
    xi = np.array([[1, 2, 0], [0, 1, 3], [2, 0, 1], [1, 1, 0], [0, 2, 0]], np.float32)
    # C = ZᵀZ: C00 = 6, C11 = 10, C22 = 10, C01 = 3, C02 = 2, C12 = 3; fires 3, 4, 2
    write_codes(tmp_path / "codes.zarr", [f"i{i}" for i in range(5)], xi)
    t = compute_cooccurrence(tmp_path / "codes.zarr", over="images", top=2, block=2).table
    s60 = np.sqrt(60.0)
    expected = pl.DataFrame(
        {
            "concept": [0, 0, 1, 1, 2, 2],
            "rank": [1, 2, 1, 2, 1, 2],
            "partner": [1, 2, 0, 2, 1, 0],
            "cosine": [3 / s60, 2 / s60, 3 / s60, 3 / 10, 3 / 10, 2 / s60],
            "cooccurrence": [3.0, 2.0, 3.0, 3.0, 3.0, 2.0],
            "n_both": [2, 1, 2, 1, 1, 1],
            "fires": [3, 3, 4, 4, 2, 2],
            "partner_fires": [4, 2, 3, 2, 4, 3],
        }
    )
    got = t.select(expected.columns).with_columns(
        pl.col("concept", "rank", "partner").cast(pl.Int64)
    )
    assert_frame_equal(got, expected, check_dtypes=False, rel_tol=1e-6)


def test_token_codes_one_concept_and_one_image_at_a_time(tmp_path: Path) -> None:
    """Two images of two tokens, over tokens, one concept per pass and one image per block
    (a block holding a single code of the pass's concept): Z's rows are the tokens
    [1, 2, 0], [0, 0, 1], [0, 1, 0], [2, 0, 1], so C00 = 5, C11 = 5, C22 = 2, C01 = 2,
    C02 = 2, C12 = 0; each concept fires on 2 tokens."""
    idx = np.array([[[0, 1], [2, -1]], [[1, 0], [0, 2]]])  # a stored code of 0 at (1, 0, 1)
    val = np.array([[[1.0, 2.0], [1.0, 0.0]], [[1.0, 0.0], [2.0, 1.0]]])
    _write_sparse(tmp_path / "codes.zarr", idx, val, 3)
    t = compute_cooccurrence(tmp_path / "codes.zarr", top=2, block=1, block_rows=1).table
    expected = pl.DataFrame(
        {
            "concept": [0, 0, 1, 2],
            "rank": [1, 2, 1, 1],
            "partner": [2, 1, 0, 0],
            "cosine": [2 / np.sqrt(10.0), 0.4, 0.4, 2 / np.sqrt(10.0)],
            "cooccurrence": [2.0, 2.0, 2.0, 2.0],
            "n_both": [1, 1, 1, 1],
            "fires": [2, 2, 2, 2],
            "partner_fires": [2, 2, 2, 2],
        }
    )
    got = t.select(expected.columns).with_columns(
        pl.col("concept", "rank", "partner").cast(pl.Int64)
    )
    assert_frame_equal(got, expected, check_dtypes=False, rel_tol=1e-6)

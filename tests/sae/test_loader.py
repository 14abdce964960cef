"""The streaming token loader: coverage, shuffling, exact position, bounded memory."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path

import numpy as np

from blindspot_assets.sae.data import TokenLoader
from blindspot_assets.store.layout import feature_arrays
from blindspot_assets.store.rowstore import RowStore


def _id_store(
    path: Path, n_rows: int, n_tokens: int, d: int, invalid: set[int], chunk_rows: int = 4
) -> RowStore:
    """Token (row, t) holds the value row * n_tokens + t in every dimension: its identity."""
    store = RowStore.create_or_resume(
        path,
        [f"i{i}" for i in range(n_rows)],
        feature_arrays(n_tokens, d),
        {"fingerprint": f"ids-{n_rows}"},
        chunk_rows,
    )
    for a in range(0, n_rows, chunk_rows):
        b = min(n_rows, a + chunk_rows)
        ids = np.arange(a * n_tokens, b * n_tokens, dtype=np.float32).reshape(b - a, n_tokens, 1)
        valid = np.array([i not in invalid for i in range(a, b)])
        store.write_block(
            a,
            {"tokens": np.repeat(ids, d, axis=2).astype(np.float16)},
            valid,
            ["ok" if v else "bad" for v in valid],
        )
    return store


def test_each_epoch_visits_every_valid_token_once_in_a_new_order(tmp_path: Path) -> None:
    _id_store(tmp_path / "a.zarr", 24, 5, 3, invalid={2, 7})
    _id_store(tmp_path / "b.zarr", 8, 5, 3, invalid=set())
    loader = TokenLoader(
        [tmp_path / "a.zarr", tmp_path / "b.zarr"], batch_size=10, buffer_tokens=40, seed=1
    )
    assert loader.n_tokens == (22 + 8) * 5 == 150
    batches = list(itertools.islice(iter(loader), 2 * 150 // 10))
    ids = np.concatenate([b[:, 0].numpy() for b in batches]).astype(int)
    assert all((b[:, :1] == b).all() for b in batches)  # rows stay whole tokens
    ep1, ep2 = ids[:150], ids[150:]
    a_ids = {r * 5 + t for r in range(24) if r not in (2, 7) for t in range(5)}
    b_ids = {r * 5 + t for r in range(8) for t in range(5)}  # overlap a's ids: count them
    expected = sorted([*a_ids, *b_ids])
    assert sorted(ep1) == expected and sorted(ep2) == expected
    assert list(ep1) != list(ep2) and list(ep1) != sorted(ep1)


def test_loader_position_resumes_the_same_stream(tmp_path: Path) -> None:
    _id_store(tmp_path / "a.zarr", 30, 7, 2, invalid={5})
    make = lambda: TokenLoader([tmp_path / "a.zarr"], 16, 50, seed=3)  # noqa: E731
    ref = [b.numpy() for b in itertools.islice(iter(make()), 40)]
    first = make()
    it = iter(first)
    for _ in range(17):
        next(it)
    position, carry = first.state()
    second = make()
    second.load_state(position, carry)
    rest = [b.numpy() for b in itertools.islice(iter(second), 23)]
    for a, b in zip(ref[17:], rest, strict=True):
        np.testing.assert_array_equal(a, b)


def _peak_bytes_of_one_epoch(path: Path, n_rows: int) -> int:
    _id_store(path, n_rows, 16, 64, invalid=set(), chunk_rows=8)
    loader = TokenLoader([path], batch_size=128, buffer_tokens=1024, seed=0)
    tracemalloc.start()
    tracemalloc.reset_peak()
    for _ in itertools.islice(iter(loader), loader.steps_for(1)):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_loader_memory_is_bounded_by_the_buffer_not_the_dataset(tmp_path: Path) -> None:
    small = _peak_bytes_of_one_epoch(tmp_path / "small.zarr", 128)
    large = _peak_bytes_of_one_epoch(tmp_path / "large.zarr", 2048)  # 16× the tokens
    dataset_bytes = 2048 * 16 * 64 * 2
    assert large < 1.5 * small + 256 * 1024, (small, large)
    assert large < dataset_bytes / 4, (large, dataset_bytes)

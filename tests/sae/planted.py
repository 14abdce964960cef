"""Synthetic feature stores built from a planted sparse dictionary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blindspot_assets.store.layout import feature_arrays
from blindspot_assets.store.rowstore import RowStore


def planted_atoms(n_atoms: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def write_planted_store(
    path: Path,
    atoms: np.ndarray,
    n_rows: int,
    n_tokens: int,
    seed: int,
    chunk_rows: int = 16,
    max_active: int = 3,
    invalid_rows: Sequence[int] = (),
    noise: float = 0.01,
) -> RowStore:
    """Each token is a positive combination of 1..max_active planted atoms plus a little noise."""
    rng = np.random.default_rng(seed)
    n_atoms, d = atoms.shape
    ids = [f"img{i:05d}" for i in range(n_rows)]
    store = RowStore.create_or_resume(
        path, ids, feature_arrays(n_tokens, d), {"fingerprint": f"planted-{seed}"}, chunk_rows
    )
    for start in range(0, n_rows, chunk_rows):
        stop = min(n_rows, start + chunk_rows)
        r = stop - start
        coef = np.zeros((r * n_tokens, n_atoms))
        n_active = rng.integers(1, max_active + 1, size=r * n_tokens)
        for i, s in enumerate(n_active):
            coef[i, rng.choice(n_atoms, size=s, replace=False)] = rng.uniform(1.0, 3.0, size=s)
        x = coef @ atoms + noise * rng.normal(size=(r * n_tokens, d))
        valid = np.array([start + j not in invalid_rows for j in range(r)])
        status = ["ok" if v else "decode_error: planted" for v in valid]
        tokens = x.reshape(r, n_tokens, d).astype(np.float16)
        tokens[~valid] = 0
        store.write_block(start, {"tokens": tokens}, valid, status)
    return store

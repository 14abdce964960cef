"""Helpers that write small code and feature row stores the way the pipeline does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from blindspot_assets.store.layout import code_arrays, feature_arrays
from blindspot_assets.store.rowstore import RowStore


def write_codes(
    path: Path,
    image_ids: Sequence[str],
    xi_nc: np.ndarray,
    nfire_nc: np.ndarray | None = None,
    valid_n: np.ndarray | None = None,
    chunk_rows: int = 8,
) -> Path:
    n, c = xi_nc.shape
    if nfire_nc is None:
        nfire_nc = (xi_nc > 0).astype(np.uint16)
    if valid_n is None:
        valid_n = np.ones(n, dtype=bool)
    store = RowStore.create_or_resume(
        path,
        list(image_ids),
        code_arrays(n_tokens=4, n_concepts=c, k_max=2),
        attrs={"fingerprint": "test"},
        chunk_rows=chunk_rows,
    )
    status = ["ok" if v else "decode_error" for v in valid_n]
    store.write_block(
        0, {"xi": xi_nc.astype(np.float32), "nfire": nfire_nc.astype(np.uint16)}, valid_n, status
    )
    return path


def write_features(
    path: Path, image_ids: Sequence[str], tokens_ntd: np.ndarray, chunk_rows: int = 8
) -> Path:
    n, t, d = tokens_ntd.shape
    store = RowStore.create_or_resume(
        path,
        list(image_ids),
        feature_arrays(t, d),
        attrs={"fingerprint": "test"},
        chunk_rows=chunk_rows,
    )
    store.write_block(0, {"tokens": tokens_ntd.astype(np.float16)}, np.ones(n, bool), ["ok"] * n)
    return path


@pytest.fixture
def codes_writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    counter = iter(range(10_000))

    def _write(image_ids: Sequence[str], xi_nc: np.ndarray, **kw: object) -> Path:
        return write_codes(tmp_path / f"codes{next(counter)}.zarr", image_ids, xi_nc, **kw)  # type: ignore[arg-type]

    return _write

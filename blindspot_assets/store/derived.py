"""Arrays derived from one row store, computed once and cached (the real side of the
distribution metrics: its k-NN radii and Gaussian moments, the same for every model of a run).

Layout, under ``DataLayout.derived`` (``<data_root>/derived``):

    <kind>/<dataset>/<store version>/<key>.npz     uncompressed arrays, written all or nothing

``store version`` (``store_version``) hashes what makes the row store what it is — its image
ids, arrays and input fingerprint (the resume key ``RowStore.create_or_resume`` records) and
its valid rows — so a rebuilt or re-encoded store has another version and its old entries are
never read; writing an entry removes the entries of the dataset's other versions. ``key`` is
the caller's hash of everything else the arrays depend on (rows used, parameters).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from blindspot_assets.store.atomic import write_atomic
from blindspot_assets.store.layout import check_key, check_store_key
from blindspot_assets.store.rowstore import RowStore

SUFFIX = ".npz"


def store_version(store: RowStore) -> str:
    """16 hex digits identifying a row store's content: its resume key (ids, arrays, input
    fingerprint, chunking), its fingerprint and its valid rows."""
    attrs = store.attrs
    h = hashlib.sha256()
    h.update(json.dumps([attrs.get("_resume_key"), attrs.get("fingerprint")]).encode())
    h.update(np.packbits(np.asarray(store.valid(), dtype=bool)).tobytes())
    return h.hexdigest()[:16]


def entry_path(root: Path, kind: str, dataset: str, version: str, key: str) -> Path:
    """Where the arrays of (``kind``, ``dataset`` at ``version``, ``key``) live."""
    return root / check_key(kind) / check_store_key(dataset) / check_key(version) / (key + SUFFIX)


def load_arrays(
    root: Path, kind: str, dataset: str, version: str, key: str
) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there are none (or the file cannot be read)."""
    path = entry_path(root, kind, dataset, version, key)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError):
        return None


def save_arrays(
    root: Path, kind: str, dataset: str, version: str, key: str, arrays: Mapping[str, np.ndarray]
) -> Path:
    """Write the arrays all or nothing; entries of the dataset's other store versions go."""
    path = entry_path(root, kind, dataset, version, key)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)

    write_atomic(path, write)
    for other in path.parent.parent.iterdir():
        if other.name != version and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    return path

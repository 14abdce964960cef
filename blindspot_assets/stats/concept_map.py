"""A 2-D map of the concepts: t-SNE (openTSNE) of the SAE dictionary rows under cosine distance.

Concepts whose dictionary directions point the same way land near each other, as in the paper
authors' concept explorer. t-SNE keeps neighbourhoods (what a map is read for: "what is near this
concept?"); a linear projection (PCA, classical MDS on cosine) of 32,000 nearly orthogonal
directions in 768 dimensions shows one blob. openTSNE is a maintained, BSD-licensed
implementation with FFT-accelerated gradients (32k concepts in minutes on a CPU) and a fixed
``random_state``; fewer than ``MIN_TSNE`` concepts are placed by PCA instead (t-SNE needs a few
times the perplexity in points).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

MIN_TSNE = 8
PERPLEXITY = 30.0
# Below this many concepts the map is computed on one thread whatever ``n_jobs`` says: starting
# openTSNE's thread pool costs 2–10 s there (a 32-concept map: 0.25 s on one thread, 3–11 s on
# all), and on so few rows the threaded gradient gives the same map.
PARALLEL_FROM = 1000


def _unit_rows(dictionary: ArrayLike) -> np.ndarray:
    d = np.asarray(dictionary, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"dictionary must be a non-empty (concepts, dim) matrix, got {d.shape}")
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.asarray(d / np.where(norm > 0, norm, 1.0), dtype=np.float64)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    out = np.zeros((x.shape[0], 2))
    k = min(2, s.size)
    out[:, :k] = u[:, :k] * s[:k]
    return out


def concept_map_table(dictionary: ArrayLike, seed: int = 0, n_jobs: int = 1) -> pl.DataFrame:
    """(``concept``, ``x``, ``y``, ``method``) for every row of the (c, d) dictionary;
    ``n_jobs`` threads (-1: every core) from :data:`PARALLEL_FROM` rows on."""
    x = _unit_rows(dictionary)
    n = x.shape[0]
    n_jobs = n_jobs if n >= PARALLEL_FROM else 1
    if n < MIN_TSNE:
        xy, method = _pca_2d(x), "pca"
    else:
        from openTSNE import TSNE

        perplexity = min(PERPLEXITY, (n - 1) / 3.0)
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            metric="cosine",
            initialization="pca",
            random_state=seed,
            n_jobs=n_jobs,
            verbose=False,
        )
        xy, method = np.asarray(tsne.fit(x), dtype=np.float64), "tsne_cosine"
    return pl.DataFrame(
        {
            "concept": np.arange(n, dtype=np.int32),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "method": [method] * n,
        }
    )

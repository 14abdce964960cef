"""Memorisation candidates: generated images that are near copies of a real image.

A generated image x′ is compared with every real image on independent kinds of evidence
("channels"), each robust to what a near copy goes through (re-encoding, a border crop resized
back, small shifts):

- ``patch``: DINOv2 patch tokens as a spatial map — centred on the real set's mean token,
  average-pooled to a coarse ``pool × pool`` grid, L2-normalised — so two images match when the
  same content sits in the same places. The real side is also matched zoomed in (its central
  ``1/s`` of the grid resampled to the full grid, ``s`` in ``scales``), which a border crop
  resized back is.
- ``pixel`` (when the image folders are given): small, box-filtered, mean-centred colour
  thumbnails, real side at the same zooms. Where an encoder is insensitive to layout or
  over-sensitive to texture phase, pixels still see a copy.

Distances are cosine distances per channel. **Statistic, threshold and null.** The raw nearest
distance is not comparable between images: generated images are not exchangeable with real ones
(a model's redraws and emptied scenes sit in denser regions than real scenes), so a threshold on
it calibrated on real→real distances lists many times its nominal rate of non-copies. The
statistic is local and scale free instead: with d₁ ≤ … ≤ d_n the distances to the ``neighbours``
nearest distinct real images (an image's zooms counted once),

    r_c(x′) = d₁ / mean(d₁, …, d_n)                         (Carlini et al. 2023)

a dense neighbourhood shrinks every d_i and leaves r_c alone, while a copy has d₁ ≈ 0 against
ordinary d₂ … d_n: r_c ≈ 0. Its null is the same statistic on real images, leave-one-out: for a
seeded sample of ``calibration_size`` real images, r_c over the n nearest *other* real images.
Each channel's threshold τ_c is the ``calibration_quantile / n_channels`` quantile of those, so
the expected number of false candidates among n generated images is n · Σ_c F_c(τ_c) ≈
n · ``calibration_quantile``; it is reported (``expected_false_candidates``: n · Σ_c
max(F̂_c(τ_c), level), the empirical CDF of the null at τ_c, never below the level a small
calibration sample cannot resolve). A generated image is a candidate when any channel is below
its threshold; ``distance`` is min_c r_c / τ_c (< 1: candidate), the nearest real image is that
channel's.

**Concept space** (when code stores are given): the paper's evidence, ‖ξ(x′) − ξ(x)‖ relative to
‖ξ(x′)‖ + ‖ξ(x)‖, for the matched real image (``concept_distance``) and for the image of the
caption that prompted x′ (``own_concept_distance``): a copy has both small; a template (the same
picture for many captions) has a small distance to a real image that is not its own.

Everything is blocked: generated images are read ``block_rows`` at a time and compared with the
real descriptors (held in memory: per real image and zoom ``pool² · d`` and ``3 · thumb²``
float32 values, ~40 kB for ViT-B at pool 4 with 3 zooms, so ~400 MB for 10,000 images; the
queries' descriptors, one per image, are held too, to be searched in one call); no N × N
matrix is formed. The nearest real images are found exactly (the brute-force answer) through a
``NearestIndex`` (faiss): a flat inner-product search up to ``FLAT_MAX`` reference vectors,
above it an IVF search made exact by a cone bound per list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from PIL import Image

from blindspot_assets.stats.reading import iter_blocks, open_store, read_rows, select_rows
from blindspot_assets.store.images import caption_of, read_manifest, split_sample_id
from blindspot_assets.store.layout import TokenLayout
from blindspot_assets.store.rowstore import RowStore

I64 = NDArray[np.int64]
F32 = NDArray[np.float32]
DEFAULT_SCALES = (1.0, 1.0 / 0.92, 1.0 / 0.84)  # no crop, 4 % and 8 % borders cut
NEIGHBOURS = 10  # n of the local ratio d₁ / mean(d₁ … d_n)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.reshape(x.shape[0], -1).float(), dim=1)


def _zoom(maps: torch.Tensor, scale: float) -> torch.Tensor:
    """The central 1/scale of (n, ch, h, w) maps resampled to (h, w) (bilinear)."""
    if scale == 1.0:
        return maps
    theta = torch.tensor([[1.0 / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]])
    grid = torch.nn.functional.affine_grid(
        theta.expand(maps.shape[0], 2, 3), list(maps.shape), align_corners=False
    )
    return torch.nn.functional.grid_sample(maps, grid, mode="bilinear", align_corners=False)


@dataclass
class Channel:
    """One kind of evidence: descriptors of row blocks, the real side at several zooms."""

    name: str
    describe: Callable[[I64, float], torch.Tensor]  # (rows, zoom) → (n, D) unit vectors


def patch_channel(store: RowStore, mean_d: NDArray[np.float32], pool: int) -> Channel:
    tokens = store.array("tokens")
    n_tokens, dim = int(tokens.shape[1]), int(tokens.shape[2])
    layout = TokenLayout.infer(n_tokens, dict(store.attrs))
    first, g = layout.first_patch, layout.grid
    mean_t = torch.from_numpy(np.asarray(mean_d, np.float32))

    def describe(rows: I64, zoom: float) -> torch.Tensor:
        block = torch.from_numpy(read_rows(tokens, rows).astype(np.float32))
        patches = block[:, first : first + g * g] - mean_t
        maps = patches.reshape(-1, g, g, dim).permute(0, 3, 1, 2)
        pooled = torch.nn.functional.adaptive_avg_pool2d(_zoom(maps, zoom), min(pool, g))
        return _normalize(pooled)

    return Channel("patch", describe)


def _thumbnail(path: Path, side: int) -> F32:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((4 * side, 4 * side), Image.Resampling.BOX))
    return arr.astype(np.float32).transpose(2, 0, 1) / 255.0


def pixel_channel(image_dir: Path, store: RowStore, side: int) -> Channel:
    """Thumbnails of the images behind a store's rows (by image id, via the folder manifest)."""
    manifest = read_manifest(image_dir).select("image_id", "path")
    path_of = dict(zip(manifest["image_id"].to_list(), manifest["path"].to_list(), strict=True))
    ids = store.image_ids()

    def describe(rows: I64, zoom: float) -> torch.Tensor:
        maps = torch.from_numpy(np.stack([_thumbnail(image_dir / path_of[ids[r]], side)
                                          for r in rows]))  # fmt: skip
        small = torch.nn.functional.adaptive_avg_pool2d(_zoom(maps, zoom), side)
        small = small - small.mean(dim=(1, 2, 3), keepdim=True)
        return _normalize(small)

    return Channel("pixel", describe)


FLAT_MAX = 32_768  # reference vectors searched flat; above, the certified IVF search


class NearestIndex:
    """Exact top-k maximum-inner-product search over unit vectors, with faiss.

    Up to ``flat_max`` reference vectors (32,768: about 10,000 real images at three zooms) a
    faiss ``IndexFlatIP``: every query against every vector, one BLAS matmul per block of
    queries. Above it an inverted file: a spherical faiss k-means (seeded, on 64 vectors per
    list) cuts the vectors into ``n_lists`` lists (√N by default, of about √N vectors each:
    comparing the list centres and reading a few lists then cost a query about as much), and
    each list j keeps its unit centre ĉ_j and the half-angle α_j of the smallest cone around
    ĉ_j holding all its vectors, so no vector of the list is closer to a unit query q at angle
    β_j = ∠(q, ĉ_j) than max(0, β_j − α_j). The search is exact: each query reads its
    ``probe`` nearest lists (the faiss quantizer), then every other list that may still beat
    its k-th best so far, s: β_j < α_j + arccos s (less 1e-5 of slack for float rounding; one
    matmul per block, ``_may_beat``). A list it skips cannot hold a better vector, so the
    answer is the brute-force one; where lists are tight a query reads a few, without any
    structure it reads them all. A list is read against all its queries at once (faiss
    ``knn``: one BLAS matmul, on one thread), so its vectors are read once per pass. Memory:
    the vectors (float32, N · D, sorted by list) and their ids: O(N · D).
    """

    def __init__(
        self,
        vectors: torch.Tensor | F32,
        ids: I64,
        flat_max: int = FLAT_MAX,
        n_lists: int | None = None,
        probe: int = 2,
        seed: int = 0,
    ) -> None:
        x = np.ascontiguousarray(np.asarray(vectors, np.float32))
        self.ids = np.asarray(ids, np.int64)
        self.size, dim = x.shape
        _, counts = np.unique(self.ids, return_counts=True)
        self.per_id = int(counts.max()) if counts.size else 1  # vectors sharing one id, at most
        self.probe = probe
        self.lists_scanned = 0  # (query, list) pairs read by the IVF search, for the benchmarks
        self.flat = faiss.IndexFlatIP(dim)
        self.n_lists = 0
        if self.size <= flat_max:
            self.flat.add(x)
            return
        self.n_lists = n_lists or max(2, math.isqrt(self.size))
        kmeans = faiss.Kmeans(dim, self.n_lists, niter=10, spherical=True, seed=seed,
                              max_points_per_centroid=64)  # fmt: skip
        kmeans.train(x)  # on a seeded sample of 64 vectors per list
        self.flat.add(np.asarray(kmeans.centroids, np.float32))  # the quantizer: list centres
        assign = self.flat.search(x, 1)[1][:, 0]
        order = np.argsort(assign, kind="stable")
        self.vectors, self.position = x[order], order  # sorted by list
        self.offsets = np.searchsorted(assign[order], np.arange(self.n_lists + 1))
        self.cones = _list_cones(
            self.vectors, self.offsets, self.flat.reconstruct_n(0, self.n_lists)
        )

    def search(self, queries: torch.Tensor | F32, k: int = 1) -> tuple[F32, I64]:
        """(similarities, ids) of the k most similar reference vectors per query, best first
        (similarity −inf and id −1 past the last vector)."""
        q = np.ascontiguousarray(np.asarray(queries, np.float32))
        k = max(1, k)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        sim, at = self.flat.search(q, k) if self.n_lists == 0 else self._ivf_search(q, k)
        sim[at < 0] = -np.inf
        return sim, np.where(at < 0, -1, self.ids[np.maximum(at, 0)])

    def _ivf_search(self, q: F32, k: int) -> tuple[F32, I64]:
        """Two passes over all the queries: their ``probe`` nearest lists, then the lists
        that may beat their k-th best; each pass reads every list once, against all the
        queries that need it. ``at`` holds positions in the vectors given."""
        sim = np.full((len(q), k), -np.inf, np.float32)
        at = np.full((len(q), k), -1, np.int64)
        probe = min(self.probe, self.n_lists)
        first = np.concatenate(
            [self.flat.search(q[a:b], probe)[1] for a, b in iter_blocks(len(q), 8192)]
        )
        self._scan(q, np.repeat(np.arange(len(q)), probe), first.ravel(), sim, at)
        rows, lists = [], []
        for a, b in iter_blocks(len(q), 4096):
            may = _may_beat(q[a:b], sim[a:b, k - 1], self.cones)
            np.put_along_axis(may, first[a:b], False, axis=1)  # read already
            r, j = np.nonzero(may)
            rows.append(a + r)
            lists.append(j)
        self._scan(q, np.concatenate(rows), np.concatenate(lists), sim, at)
        return sim, at

    def _scan(self, q: F32, rows: I64, lists: I64, sim: F32, at: I64) -> None:
        """Merge into ``sim``/``at`` the top k of each (query row, list) pair given, list by
        list: one faiss ``knn`` (a BLAS matmul) per list against all its queries."""
        self.lists_scanned += int(rows.size)
        order = np.argsort(lists, kind="stable")
        rows, lists = rows[order], lists[order]
        bounds = np.searchsorted(lists, np.arange(self.n_lists + 1))
        with _one_thread():  # many small matmuls: waking a thread pool costs more than it gives
            self._scan_lists(q, rows, bounds, sim, at)

    def _scan_lists(self, q: F32, rows: I64, bounds: I64, sim: F32, at: I64) -> None:
        k = sim.shape[1]
        for j in np.flatnonzero(np.diff(bounds)):
            lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
            if hi == lo:
                continue
            r = rows[bounds[j] : bounds[j + 1]]
            ip = faiss.METRIC_INNER_PRODUCT
            s2, a2 = faiss.knn(q[r], self.vectors[lo:hi], min(k, hi - lo), metric=ip)
            sim[r], at[r] = _merge_top(sim[r], at[r], s2, self.position[lo + a2], k)


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class _Cones:
    """Per list: unit centre ĉ, cos α and sin α of its cone's half-angle α, as the rows
    (ĉ, cos α, sin α) of one matrix."""

    rows: F32  # (lists, D + 2)


def _list_cones(vectors: F32, offsets: I64, centres: F32) -> _Cones:
    """Each list's unit centre and its cone's half-angle around it (over all its vectors; an
    empty list gets α = 0 around its centre: it is never read)."""
    centres = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    cos_min = np.ones(len(centres), np.float64)
    for j in range(len(centres)):
        lo, hi = offsets[j], offsets[j + 1]
        if hi > lo:
            cos_min[j] = float((vectors[lo:hi] @ centres[j]).min())
    alpha = np.arccos(np.clip(cos_min, -1.0, 1.0))
    return _Cones(np.concatenate([centres, np.cos(alpha)[:, None], np.sin(alpha)[:, None]], 1,
                                 dtype=np.float32))  # fmt: skip


def _may_beat(q: F32, best: F32, cones: _Cones) -> NDArray[np.bool_]:
    """(queries, lists): may a vector of the list beat the query's best so far, s? Yes when
    β < α + γ, γ = arccos(s − 1e-5) (slack for float rounding): with b = cos γ,
    (q, −b, √(1 − b²)) · (ĉ, cos α, sin α) = cos β − cos(α + γ) > 0 (for α + γ < π; a query
    whose γ exceeds π − max α may beat every list)."""
    b = np.clip(best.astype(np.float64) - 1e-5, -1.0, 1.0)[:, None]
    rows = np.concatenate([q, -b, np.sqrt(1.0 - b * b)], axis=1, dtype=np.float32)
    may = rows @ cones.rows.T > 0
    alpha_max = float(np.arccos(np.clip(cones.rows[:, -2].min(), -1.0, 1.0)))
    may[np.arccos(b[:, 0]) + alpha_max >= math.pi - 1e-6] = True
    return may


def _merge_top(sim: F32, at: I64, sim2: F32, at2: I64, k: int) -> tuple[F32, I64]:
    """The top k of two candidate lists per row (disjoint: from different lists)."""
    s, a = np.concatenate([sim, sim2], axis=1), np.concatenate([at, at2], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(a, order, axis=1)


def _ref_index(
    channel: Channel, rows: I64, scales: Sequence[float], block_rows: int
) -> NearestIndex:
    """The real side's descriptors at every zoom in one index; each vector's id is its row."""
    parts, ids = [], []
    for zoom in scales:
        for a, b in iter_blocks(rows.size, block_rows):
            parts.append(channel.describe(rows[a:b], zoom).numpy())
            ids.append(rows[a:b])
    return NearestIndex(np.concatenate(parts), np.concatenate(ids))


def nearest_distinct(
    queries: torch.Tensor | F32, index: NearestIndex, n: int = 1, exclude: I64 | None = None
) -> tuple[np.ndarray, I64]:
    """Cosine distances (m, n) to and ids of the n nearest *distinct* ids per query, nearest
    first (an id's distance is its nearest vector's; inf and −1 past the last id); ``exclude``
    (one id per query) is skipped. Exact: an id holds at most ``index.per_id`` vectors, so the
    n-th distinct id's best vector ranks at most (n − 1) · per_id + 1 among all vectors, and
    the excluded id takes at most per_id places before it."""
    k = (n + (exclude is not None)) * index.per_id
    sim, ids = index.search(queries, k)
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids: the most similar first
    by_id = np.take_along_axis(ids, order, axis=1)
    first = np.ones(by_id.shape, bool)
    first[:, 1:] = by_id[:, 1:] != by_id[:, :-1]
    keep = np.empty_like(first)
    np.put_along_axis(keep, order, first, axis=1)
    keep &= ids >= 0
    if exclude is not None:
        keep &= ids != np.asarray(exclude, np.int64)[:, None]
    pos = np.argsort(~keep, axis=1, kind="stable")[:, :n]  # the first n kept, in rank order
    found = np.take_along_axis(keep, pos, axis=1)
    dist = 1.0 - np.clip(np.take_along_axis(sim, pos, axis=1).astype(np.float64), -1.0, 1.0)
    return np.where(found, dist, np.inf), np.where(found, np.take_along_axis(ids, pos, axis=1), -1)


def _token_mean(store: RowStore, rows: I64, block_rows: int) -> NDArray[np.float32]:
    tokens = store.array("tokens")
    total = np.zeros(int(tokens.shape[2]), np.float64)
    count = 0
    for a, b in iter_blocks(rows.size, block_rows):
        block = read_rows(tokens, rows[a:b]).astype(np.float64)
        total += block.sum(axis=(0, 1))
        count += block.shape[0] * block.shape[1]
    return (total / max(count, 1)).astype(np.float32)


def _xi_rows(store: RowStore, ids: Sequence[str]) -> tuple[dict[str, int], object]:
    valid = store.valid()
    index = {i: r for r, i in enumerate(store.image_ids()) if valid[r]}
    return {i: index[i] for i in ids if i in index}, store.array("xi")


def _concept_distance(
    gen_codes: RowStore, real_codes: RowStore, gen_ids: list[str], real_ids: list[str]
) -> np.ndarray:
    """‖ξ(x′) − ξ(x)‖ / (‖ξ(x′)‖ + ‖ξ(x)‖) per (generated, real) id pair; NaN where missing."""
    out = np.full(len(gen_ids), np.nan)
    g_index, g_xi = _xi_rows(gen_codes, gen_ids)
    r_index, r_xi = _xi_rows(real_codes, real_ids)
    for i, (g, r) in enumerate(zip(gen_ids, real_ids, strict=True)):
        if g in g_index and r in r_index:
            a = np.asarray(g_xi[g_index[g]], np.float64)  # type: ignore[index]
            b = np.asarray(r_xi[r_index[r]], np.float64)  # type: ignore[index]
            norm = np.linalg.norm(a) + np.linalg.norm(b)
            out[i] = np.linalg.norm(a - b) / norm if norm > 0 else 0.0
    return out


def _blocks(rows: I64, block_rows: int) -> Iterator[I64]:
    for a, b in iter_blocks(rows.size, block_rows):
        yield rows[a:b]


def _concept_columns(
    real_codes: str | Path | RowStore | None,
    gen_codes: str | Path | RowStore | None,
    gen_ids: list[str],
    near_ids: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """``concept_distance`` (to the matched real image) and ``own_concept_distance``."""
    if real_codes is None or gen_codes is None:
        return np.full(len(gen_ids), np.nan), np.full(len(gen_ids), np.nan)
    rc, gc = open_store(real_codes), open_store(gen_codes)
    own_ids = [split_sample_id(i)[0] for i in gen_ids]  # the caption's real image
    return _concept_distance(gc, rc, gen_ids, near_ids), _concept_distance(gc, rc, gen_ids, own_ids)


@dataclass(frozen=True)
class _ChannelResult:
    tau: float  # the channel's threshold on the local ratio
    ratio: np.ndarray  # per generated image: the local ratio (``local_ratio``)
    dist: np.ndarray  # per generated image: distance to its nearest real image
    near: I64  # that real image's row
    expected_false: float  # n · max(F̂(τ), level)


def local_ratio(dist: np.ndarray) -> np.ndarray:
    """d₁ / mean(d₁ … d_n) per row of (m, n) distances to the n nearest distinct images, nearest
    first (Carlini et al. 2023's distance to the nearest relative to the n nearest): scale
    free, so a dense neighbourhood (all of d₁ … d_n small) does not make it small; a copy has
    d₁ ≈ 0, so ≈ 0. Missing neighbours (inf) are left out; 0 where all the distances are 0."""
    finite = np.where(np.isfinite(dist), dist, np.nan)
    mean = np.nanmean(finite, axis=1) if dist.size else np.zeros(len(dist))
    out: np.ndarray = np.divide(dist[:, 0], mean, out=np.zeros(len(dist)), where=mean > 0)
    return out


def tail_quantile(null: np.ndarray, level: float, tail: float = 0.05) -> float:
    """The ``level`` quantile of a null sample of ratios, its lower tail extrapolated where the
    sample cannot resolve it. The lower tail of a ratio that only vanishes for coincident
    images is a power law, F(t) ∝ t^k (k the local intrinsic dimension: for points spread
    evenly, (d₁/d_n)^k is the least of n − 1 uniforms); its exponent is the Hill estimate from
    the m = ⌈``tail`` · N⌉ smallest values t₍₁₎ ≤ … ≤ t₍m₎ below t₍m+1₎,
    k̂ = 1 / mean_i log(t₍m+1₎ / t₍i₎), and τ = t₍m+1₎ · (level · N / m)^(1/k̂). Where
    level ≥ m / N, the empirical quantile."""
    t = np.sort(np.asarray(null, np.float64))
    m = min(len(t) - 1, max(10, math.ceil(tail * len(t))))
    if m < 1 or level >= m / len(t):
        return float(np.quantile(t, level))
    logs = np.log(t[m] / np.maximum(t[:m], 1e-12)) if t[m] > 0 else np.zeros(m)
    k = 1.0 / max(float(logs.mean()), 1e-12)
    return float(t[m] * (level * len(t) / m) ** (1.0 / k))


def _search_channel(
    real_ch: Channel,
    gen_ch: Channel,
    real_rows: I64,
    calib: I64,
    gen_rows: I64,
    sizes: tuple[Sequence[float], int, int],
    level: float,
) -> _ChannelResult:
    """One channel: the real index; the real→real null of the local ratio over the ``n``
    nearest (leave-one-out: each calibration image's own row excluded) and τ, its ``level``
    quantile; the generated side's ratio. ``sizes``: the zooms, ``n``, block rows."""
    scales, n, block_rows = sizes
    n = max(1, min(n, real_rows.size - 1))
    index = _ref_index(real_ch, real_rows, scales, block_rows)
    null = local_ratio(nearest_distinct(_describe(real_ch, calib, block_rows), index, n, calib)[0])
    tau = tail_quantile(null, level)
    # F̂(τ) is the level when the sample resolves the quantile; never report less
    expected_false = gen_rows.size * max(float(np.mean(null < tau)), level)
    dist, near = nearest_distinct(_describe(gen_ch, gen_rows, block_rows), index, n)
    return _ChannelResult(tau, local_ratio(dist), dist[:, 0], near[:, 0], expected_false)


def _describe(channel: Channel, rows: I64, block_rows: int) -> torch.Tensor:
    """Descriptors of ``rows`` (no zoom), read in blocks: all the queries are searched in one
    call, so that the index groups them by leaf over the whole set."""
    parts = [channel.describe(q, 1.0) for q in _blocks(rows, block_rows)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def with_seed_counts(df: pl.DataFrame, real_ids: set[str]) -> pl.DataFrame:
    """Per generated image (one row each, ``is_candidate`` known), which caption and sample it
    is and how its caption's samples agree: ``caption_id``, ``sample``, ``n_seeds`` (the
    caption's generated images in the table: k when all were made), ``reproduced_seeds`` (how
    many of them are candidates with this row's nearest real image: "reproduced on s of k
    seeds"), ``reproduced_across_seeds`` (a candidate whose real image at least one other
    sample of the caption reproduces too), ``is_own_pair`` (the nearest real image is the
    caption's own)."""
    found = [caption_of(i, real_ids) or split_sample_id(i) for i in df["gen_image_id"]]
    same_real = ["caption_id", "nearest_real_id"]
    return (
        df.with_columns(
            caption_id=pl.Series([c for c, _ in found], dtype=pl.String),
            sample=pl.Series([s for _, s in found], dtype=pl.Int32),
        )
        .with_columns(
            n_seeds=pl.len().over("caption_id").cast(pl.Int32),
            reproduced_seeds=pl.col("is_candidate").cast(pl.Int32).sum().over(same_real),
            is_own_pair=pl.col("caption_id") == pl.col("nearest_real_id"),
        )
        .with_columns(
            reproduced_across_seeds=pl.col("is_candidate") & (pl.col("reproduced_seeds") >= 2)
        )
    )


def _calibration_rows(real_rows: I64, size: int, seed: int) -> I64:
    """The real rows of the null: all of them, or a seeded sample of ``size``."""
    if real_rows.size <= size:
        return real_rows
    return np.sort(np.random.default_rng(seed).choice(real_rows, size, replace=False))


def find_memorization_candidates(
    real_features: str | Path | RowStore,
    gen_features: str | Path | RowStore,
    calibration_quantile: float = 0.001,
    calibration_size: int = 5000,
    block_rows: int = 512,
    seed: int = 0,
    all_rows: bool = False,
    *,
    real_images: Path | None = None,
    gen_images: Path | None = None,
    real_codes: str | Path | RowStore | None = None,
    gen_codes: str | Path | RowStore | None = None,
    pool: int = 4,
    thumb: int = 24,
    scales: Sequence[float] = DEFAULT_SCALES,
    neighbours: int = NEIGHBOURS,
) -> pl.DataFrame:
    """Near copies of real images among the generated ones (see the module doc).

    Columns: ``gen_image_id``, ``nearest_real_id``, ``distance`` (min over channels of r_c/τ_c,
    r_c the local ratio over the ``neighbours`` nearest real images: < 1 is a candidate),
    ``threshold`` (1.0, the unit of ``distance``), ``evidence`` (the channels below their
    threshold, comma-separated), per channel ``<channel>_distance`` (cosine distance to the
    nearest real image), ``<channel>_ratio`` (r_c) and ``<channel>_threshold`` (τ_c),
    ``concept_distance`` and ``own_concept_distance`` (NaN without code stores),
    ``expected_false_candidates`` (under the null, for this generated set), ``is_candidate``,
    and the columns of ``with_seed_counts`` (one row per generated sample; "reproduced on s of
    k seeds"); sorted by ``distance``. Only the
    candidates unless ``all_rows``.
    """
    if not 0 < calibration_quantile < 1:
        raise ValueError(f"calibration_quantile must be in (0, 1), got {calibration_quantile}")
    real, gen = open_store(real_features), open_store(gen_features)
    real_rows, gen_rows = select_rows(real, None), select_rows(gen, None)
    if real_rows.size < 2:
        raise ValueError("memorisation threshold needs at least two valid real images")
    calib = _calibration_rows(real_rows, calibration_size, seed)
    mean_d = _token_mean(real, calib[: min(calib.size, 2048)], block_rows)
    pairs = [(patch_channel(real, mean_d, pool), patch_channel(gen, mean_d, pool))]
    if real_images is not None and gen_images is not None:
        pairs += [(pixel_channel(real_images, real, thumb), pixel_channel(gen_images, gen, thumb))]
    level = calibration_quantile / len(pairs)
    sizes = (scales, neighbours, block_rows)
    found = [_search_channel(r, g, real_rows, calib, gen_rows, sizes, level) for r, g in pairs]
    names = [r_ch.name for r_ch, _ in pairs]
    thresholds = {c: f.tau for c, f in zip(names, found, strict=True)}
    by_name = dict(zip(names, found, strict=True))
    expected_false = sum(f.expected_false for f in found)
    ratio = np.stack([by_name[c].ratio / max(thresholds[c], 1e-12) for c in names])  # (C, n)
    best_c = ratio.argmin(axis=0) if gen_rows.size else np.zeros(0, np.int64)
    near_rows = np.stack([f.near for f in found])[best_c, np.arange(gen_rows.size)]
    real_ids_all, gen_ids_all = real.image_ids(), gen.image_ids()
    gen_ids = [gen_ids_all[int(r)] for r in gen_rows]
    near_ids = [real_ids_all[int(r)] for r in near_rows]
    columns: dict[str, object] = {
        "gen_image_id": pl.Series(gen_ids, dtype=pl.String),
        "nearest_real_id": pl.Series(near_ids, dtype=pl.String),
        "distance": ratio.min(axis=0) if gen_rows.size else np.zeros(0),
        "threshold": np.ones(gen_rows.size),
        "evidence": [
            ",".join(c for c, r in zip(names, col, strict=True) if r < 1) for col in ratio.T
        ],
    }
    for c in names:
        columns[f"{c}_distance"] = by_name[c].dist
        columns[f"{c}_ratio"] = by_name[c].ratio
        columns[f"{c}_threshold"] = np.full(gen_rows.size, thresholds[c])
    columns["concept_distance"], columns["own_concept_distance"] = _concept_columns(
        real_codes, gen_codes, gen_ids, near_ids
    )
    columns["expected_false_candidates"] = np.full(gen_rows.size, expected_false)
    df = with_seed_counts(
        pl.DataFrame(columns).with_columns(is_candidate=pl.col("distance") < pl.col("threshold")),
        set(real_ids_all),
    )
    if not all_rows:
        df = df.filter("is_candidate")
    return df.sort("distance")

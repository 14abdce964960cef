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

Distances are cosine distances per channel. **Threshold and null.** Under the hypothesis that
generated images are exchangeable with real ones, a generated image's distance to its nearest
real image is distributed as a real image's distance to its nearest *other* real image. Each
channel's threshold τ_c is the ``calibration_quantile / n_channels`` quantile of those real→real
distances (a seeded sample of ``calibration_size`` real images), so the expected number of false
candidates among n generated images is n · Σ_c F_c(τ_c) ≈ n · ``calibration_quantile``; it is
reported (``expected_false_candidates``: n · Σ_c max(F̂_c(τ_c), level), the empirical CDF of the
null at τ_c, never below the level a small calibration sample cannot resolve). A generated
image is a candidate when any channel is below its threshold; ``distance`` is min_c d_c / τ_c
(< 1: candidate), the nearest real image is that channel's.

**Concept space** (when code stores are given): the paper's evidence, ‖ξ(x′) − ξ(x)‖ relative to
‖ξ(x′)‖ + ‖ξ(x)‖, for the matched real image (``concept_distance``) and for the image of the
caption that prompted x′ (``own_concept_distance``): a copy has both small; a template (the same
picture for many captions) has a small distance to a real image that is not its own.

Everything is blocked: generated images are read ``block_rows`` at a time and compared with the
real descriptors (held in memory: per real image and zoom ``pool² · d`` and ``3 · thumb²``
float32 values, ~40 kB for ViT-B at pool 4 with 3 zooms, so ~400 MB for 10,000 images); no
N × N matrix is formed. The nearest real image is found through a ``ConeIndex`` (exact: the
brute-force answer; lists of similar descriptors whose cone bound cannot beat a query's best so
far are skipped, so structured data costs a few lists per query instead of all N).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray
from PIL import Image

from blindspot_assets.stats.reading import iter_blocks, open_store, read_rows, select_rows
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import TokenLayout
from blindspot_assets.store.rowstore import RowStore

I64 = NDArray[np.int64]
F32 = NDArray[np.float32]
DEFAULT_SCALES = (1.0, 1.0 / 0.92, 1.0 / 0.84)  # no crop, 4 % and 8 % borders cut


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


class ConeIndex:
    """Exact maximum-cosine search over unit vectors, pruned by cones around cluster centres.

    The vectors are grouped by a spherical k-means (``n_lists`` ≈ √n lists); each list keeps
    its unit centre ĉ and the half-angle α of the smallest cone around ĉ holding its members.
    For a unit query q at angle β to ĉ no member is closer than angle max(0, β − α), so
    cos(max(0, β − α)) bounds every similarity in the list. A query first scans its most
    promising list, then every list whose bound beats its best so far: the answer is the
    brute-force one (up to float rounding on exact ties); when the data has structure, each
    query reads a few lists instead of all n vectors. Memory: the vectors (sorted by list),
    their ids and the centres: O(n · D).
    """

    def __init__(
        self, vectors: torch.Tensor, ids: I64, n_lists: int | None = None, seed: int = 0
    ) -> None:
        n = vectors.shape[0]
        n_lists = max(1, min(n, n_lists or round(math.sqrt(n))))
        centres = _spherical_kmeans(vectors, n_lists, seed)
        assign = torch.cat([_argmax_sim(vectors[a:b], centres) for a, b in iter_blocks(n, 8192)])
        order = torch.argsort(assign, stable=True)
        self.vectors = vectors[order].contiguous()
        self.ids = torch.from_numpy(np.asarray(ids, np.int64))[order]
        counts = torch.bincount(assign, minlength=n_lists)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
        sums = torch.zeros_like(centres).index_add_(0, assign[order], self.vectors)
        self.centres = torch.nn.functional.normalize(sums, dim=1)
        cos_min = torch.ones(n_lists)
        with _one_thread():
            for j in range(n_lists):
                a, b = int(self.offsets[j]), int(self.offsets[j + 1])
                if b > a:
                    cos_min[j] = (self.vectors[a:b] @ self.centres[j]).min()
        self.half_angle = torch.arccos(cos_min.clamp(-1.0, 1.0))
        self.lists_scanned = 0  # (query, list) pairs scanned by search, for the benchmarks

    def _members(self, lists: torch.Tensor) -> torch.Tensor:
        """Positions of the vectors of ``lists`` (sorted list ids), in one index tensor."""
        lo, hi = self.offsets[lists], self.offsets[lists + 1]
        sizes = hi - lo
        starts = torch.repeat_interleave(lo - (torch.cumsum(sizes, 0) - sizes), sizes)
        return starts + torch.arange(int(sizes.sum()))

    def _scan(
        self,
        q: torch.Tensor,
        lists: torch.Tensor,
        exclude: torch.Tensor | None,
        best: torch.Tensor,
        arg: torch.Tensor,
    ) -> None:
        """Update ``best``/``arg`` of the queries ``q`` with every vector of ``lists``, in
        column chunks of at most 2^24 similarities."""
        members = self._members(lists)
        step = max(1, (1 << 24) // max(1, q.shape[0]))
        for a in range(0, members.numel(), step):
            cols = members[a : a + step]
            sim = q @ self.vectors[cols].T
            if exclude is not None:
                sim.masked_fill_(exclude[:, None] == self.ids[cols][None, :], -torch.inf)
            value, idx = sim.max(dim=1)
            better = value > best
            best[better], arg[better] = value[better], self.ids[cols][idx[better]]
        self.lists_scanned += q.shape[0] * lists.numel()

    def search(
        self, queries: torch.Tensor, exclude: I64 | None = None, block: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(best cosine, its id) per unit query; ``exclude`` (one id per query) is skipped.

        Queries are grouped by their most promising list, ``block`` at a time: each group
        scans the union of its first lists, then the union of the lists whose bound still
        beats some query's best — two matmuls per group, not one small one per list. The
        groups run on one thread: their ops are small, and waking a thread pool costs more
        than they do.
        """
        m = queries.shape[0]
        ex = None if exclude is None else torch.from_numpy(np.asarray(exclude, np.int64))
        beta = torch.arccos((queries @ self.centres.T).clamp(-1.0, 1.0))
        bound = torch.cos((beta - self.half_angle).clamp(min=0.0)) + 1e-5  # rounding slack
        bound[:, self.offsets[1:] == self.offsets[:-1]] = -torch.inf  # empty lists
        first = bound.argmax(dim=1)
        best = torch.full((m,), -torch.inf)
        arg = torch.full((m,), -1, dtype=torch.int64)
        with _one_thread():
            for rows in torch.argsort(first, stable=True).split(block):
                self._search_group(queries[rows], rows, first, bound, ex, best, arg)
        return best, arg

    def _search_group(
        self,
        q: torch.Tensor,
        rows: torch.Tensor,
        first: torch.Tensor,
        bound: torch.Tensor,
        ex: torch.Tensor | None,
        best: torch.Tensor,
        arg: torch.Tensor,
    ) -> None:
        """One group of queries: their first lists, then every list a bound leaves open."""
        e = None if ex is None else ex[rows]
        b_best, b_arg = best[rows], arg[rows]
        seen = torch.zeros(len(self.centres), dtype=torch.bool)
        seen[first[rows]] = True
        self._scan(q, seen.nonzero().flatten(), e, b_best, b_arg)
        need = (bound[rows] > b_best[:, None]).any(dim=0) & ~seen
        if bool(need.any()):
            self._scan(q, need.nonzero().flatten(), e, b_best, b_arg)
        best[rows], arg[rows] = b_best, b_arg


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _argmax_sim(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (x @ centres.T).argmax(dim=1)


def _spherical_kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 8) -> torch.Tensor:
    """Unit centres of a spherical k-means on a seeded sample of at most 64·k rows."""
    g = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(x.shape[0], generator=g)[: min(x.shape[0], 64 * k)]]
    centres = sample[torch.randperm(sample.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = _argmax_sim(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=k)
        centres = torch.where(
            (counts > 0)[:, None], torch.nn.functional.normalize(sums, dim=1), centres
        )
    return centres


def _ref_index(channel: Channel, rows: I64, scales: Sequence[float], block_rows: int) -> ConeIndex:
    """The real side's descriptors at every zoom in one index; each vector's id is its row."""
    parts, ids = [], []
    for zoom in scales:
        for a, b in iter_blocks(rows.size, block_rows):
            parts.append(channel.describe(rows[a:b], zoom))
            ids.append(rows[a:b])
    return ConeIndex(torch.cat(parts), np.concatenate(ids))


def _nearest(queries: torch.Tensor, index: ConeIndex, q_rows: I64 | None) -> tuple[np.ndarray, I64]:
    """Distance to and row of the nearest reference (any zoom); ``q_rows`` excludes self."""
    best, arg = index.search(queries, q_rows)
    dist = (1.0 - best.clamp(-1.0, 1.0)).numpy().astype(np.float64)
    return dist, arg.numpy()


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
    return _concept_distance(gc, rc, gen_ids, near_ids), _concept_distance(gc, rc, gen_ids, gen_ids)


@dataclass(frozen=True)
class _ChannelResult:
    tau: float  # the channel's threshold
    dist: np.ndarray  # per generated image: distance to its nearest real image
    near: I64  # that real image's row
    expected_false: float  # n · max(F̂(τ), level)


def _search_channel(
    real_ch: Channel,
    gen_ch: Channel,
    real_rows: I64,
    calib: I64,
    gen_rows: I64,
    scales: Sequence[float],
    block_rows: int,
    level: float,
) -> _ChannelResult:
    """One channel: the real index, the real→real null (self excluded), τ, the generated side."""
    index = _ref_index(real_ch, real_rows, scales, block_rows)
    null = np.concatenate(
        [_nearest(real_ch.describe(q, 1.0), index, q)[0] for q in _blocks(calib, block_rows)]
    )
    tau = float(np.quantile(null, level))
    # F̂(τ) is the level when the sample resolves the quantile; never report less
    expected_false = gen_rows.size * max(float(np.mean(null < tau)), level)
    found = [_nearest(gen_ch.describe(q, 1.0), index, None) for q in _blocks(gen_rows, block_rows)]
    dist = np.concatenate([d for d, _ in found]) if found else np.zeros(0)
    near = np.concatenate([r for _, r in found]) if found else np.zeros(0, np.int64)
    return _ChannelResult(tau, dist, near, expected_false)


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
) -> pl.DataFrame:
    """Near copies of real images among the generated ones (see the module doc).

    Columns: ``gen_image_id``, ``nearest_real_id``, ``distance`` (min over channels of d_c/τ_c:
    < 1 is a candidate), ``threshold`` (1.0, the unit of ``distance``), ``evidence`` (the
    channels below their threshold, comma-separated), ``<channel>_distance`` and
    ``<channel>_threshold`` per channel, ``concept_distance`` and ``own_concept_distance``
    (NaN without code stores), ``expected_false_candidates`` (under exchangeability, for this
    generated set), ``is_own_pair``, ``is_candidate``; sorted by ``distance``. Only the
    candidates unless ``all_rows``.
    """
    if not 0 < calibration_quantile < 1:
        raise ValueError(f"calibration_quantile must be in (0, 1), got {calibration_quantile}")
    real, gen = open_store(real_features), open_store(gen_features)
    real_rows, gen_rows = select_rows(real, None), select_rows(gen, None)
    if real_rows.size < 2:
        raise ValueError("memorisation threshold needs at least two valid real images")
    calib = real_rows
    if calib.size > calibration_size:
        rng = np.random.default_rng(seed)
        calib = np.sort(rng.choice(real_rows, calibration_size, replace=False))
    mean_d = _token_mean(real, calib[: min(calib.size, 2048)], block_rows)
    pairs = [(patch_channel(real, mean_d, pool), patch_channel(gen, mean_d, pool))]
    if real_images is not None and gen_images is not None:
        pairs += [(pixel_channel(real_images, real, thumb), pixel_channel(gen_images, gen, thumb))]
    level = calibration_quantile / len(pairs)
    found = [
        _search_channel(r_ch, g_ch, real_rows, calib, gen_rows, scales, block_rows, level)
        for r_ch, g_ch in pairs
    ]
    names = [r_ch.name for r_ch, _ in pairs]
    thresholds = {c: f.tau for c, f in zip(names, found, strict=True)}
    gen_dist = {c: f.dist for c, f in zip(names, found, strict=True)}
    expected_false = sum(f.expected_false for f in found)
    ratio = np.stack([gen_dist[c] / max(thresholds[c], 1e-12) for c in names])  # (C, n)
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
        columns[f"{c}_distance"] = gen_dist[c]
        columns[f"{c}_threshold"] = np.full(gen_rows.size, thresholds[c])
    columns["concept_distance"], columns["own_concept_distance"] = _concept_columns(
        real_codes, gen_codes, gen_ids, near_ids
    )
    columns["expected_false_candidates"] = np.full(gen_rows.size, expected_false)
    df = pl.DataFrame(columns).with_columns(
        is_own_pair=pl.col("gen_image_id") == pl.col("nearest_real_id"),
        is_candidate=pl.col("distance") < pl.col("threshold"),
    )
    if not all_rows:
        df = df.filter("is_candidate")
    return df.sort("distance")

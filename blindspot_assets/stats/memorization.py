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
N × N matrix is formed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


def _ref_descriptors(
    channel: Channel, rows: I64, scales: Sequence[float], block_rows: int
) -> list[torch.Tensor]:
    """The real side's descriptors, one (n, D) tensor per zoom."""
    out = []
    for zoom in scales:
        parts = [channel.describe(rows[a:b], zoom) for a, b in iter_blocks(rows.size, block_rows)]
        out.append(torch.cat(parts) if parts else torch.zeros(0, 1))
    return out


def _nearest(
    queries: torch.Tensor, refs: list[torch.Tensor], q_rows: I64 | None, ref_rows: I64
) -> tuple[np.ndarray, I64]:
    """Distance to and row of the nearest reference (any zoom); ``q_rows`` excludes self."""
    best = torch.full((queries.shape[0],), -torch.inf)
    arg = torch.zeros(queries.shape[0], dtype=torch.int64)
    for ref in refs:
        sim = queries @ ref.T
        if q_rows is not None:
            same = torch.from_numpy(q_rows[:, None] == ref_rows[None, :])
            sim.masked_fill_(same, -torch.inf)
        value, idx = sim.max(dim=1)
        better = value > best
        best, arg = torch.where(better, value, best), torch.where(better, idx, arg)
    dist = (1.0 - best.clamp(-1.0, 1.0)).numpy().astype(np.float64)
    return dist, ref_rows[arg.numpy()]


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
    rng = np.random.default_rng(seed)
    calib = real_rows
    if calib.size > calibration_size:
        calib = np.sort(rng.choice(real_rows, calibration_size, replace=False))
    mean_d = _token_mean(real, calib[: min(calib.size, 2048)], block_rows)
    pairs = [(patch_channel(real, mean_d, pool), patch_channel(gen, mean_d, pool))]
    if real_images is not None and gen_images is not None:
        pairs.append(
            (pixel_channel(real_images, real, thumb), pixel_channel(gen_images, gen, thumb))
        )
    level = calibration_quantile / len(pairs)
    gen_dist: dict[str, np.ndarray] = {}
    gen_near: dict[str, I64] = {}
    thresholds: dict[str, float] = {}
    expected_false = 0.0
    for real_ch, gen_ch in pairs:
        refs = _ref_descriptors(real_ch, real_rows, scales, block_rows)
        null = np.concatenate(
            [_nearest(real_ch.describe(q, 1.0), refs, q, real_rows)[0]
             for q in _blocks(calib, block_rows)]
        )  # fmt: skip
        tau = float(np.quantile(null, level))
        thresholds[real_ch.name] = tau
        # F̂(τ) is the level when the sample resolves the quantile; never report less
        expected_false += gen_rows.size * max(float(np.mean(null < tau)), level)
        found = [_nearest(gen_ch.describe(q, 1.0), refs, None, real_rows)
                 for q in _blocks(gen_rows, block_rows)]  # fmt: skip
        gen_dist[real_ch.name] = np.concatenate([d for d, _ in found]) if found else np.zeros(0)
        gen_near[real_ch.name] = (
            np.concatenate([r for _, r in found]) if found else np.zeros(0, np.int64)
        )
    names = list(thresholds)
    ratio = np.stack([gen_dist[c] / max(thresholds[c], 1e-12) for c in names])  # (C, n)
    best_c = ratio.argmin(axis=0) if gen_rows.size else np.zeros(0, np.int64)
    near_rows = np.stack([gen_near[c] for c in names])[best_c, np.arange(gen_rows.size)]
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
    concept = own = np.full(gen_rows.size, np.nan)
    if real_codes is not None and gen_codes is not None:
        rc, gc = open_store(real_codes), open_store(gen_codes)
        concept = _concept_distance(gc, rc, gen_ids, near_ids)
        own = _concept_distance(gc, rc, gen_ids, gen_ids)
    columns["concept_distance"] = concept
    columns["own_concept_distance"] = own
    columns["expected_false_candidates"] = np.full(gen_rows.size, expected_false)
    df = pl.DataFrame(columns).with_columns(
        is_own_pair=pl.col("gen_image_id") == pl.col("nearest_real_id"),
        is_candidate=pl.col("distance") < pl.col("threshold"),
    )
    if not all_rows:
        df = df.filter("is_candidate")
    return df.sort("distance")

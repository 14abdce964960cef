"""How far a generated set is from the real set as a whole (docs/method.md §9): the Fréchet
distance between Gaussians fitted to one feature vector per image, and precision, recall,
density and coverage on k-nearest-neighbour manifolds (Naeem et al. 2020), each with a
bootstrap interval.

The feature vector of an image is the CLS token (token 0) of the run's encoder's
``last_hidden_state``, read from the feature store; ``fd_dinov2`` is this FD in DINOv2 space.

- **FD** = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r^½ Σ_g Σ_r^½)^½, in float64, Σ the
  sample covariance (n − 1). The trace term is the sum of the square roots of the eigenvalues
  of the symmetric PSD matrix Fᵀ Σ_g F, F a factor of Σ_r = F Fᵀ (Cholesky; for a singular
  Σ_r its symmetric square root from ``eigh``, negative eigenvalues set to 0): the eigenvalues
  of Σ_r^½ Σ_g Σ_r^½ and of Σ_r Σ_g. Negative eigenvalues (rounding) are set to 0, so no
  complex square root is taken (``trace_sqrt_product``); the result is clipped at 0.
- **PRDC**, with r_k(x) the distance from x to its k-th nearest neighbour in its own set (itself
  excluded) and B(x, r) the open ball: precision = share of generated y inside some real ball
  B(x, r_k(x)); recall = share of real x inside some generated ball B(y, r_k(y)); density =
  (1 / kM) Σ_y #{real x : y ∈ B(x, r_k(x))}; coverage = share of real x whose own ball holds
  some generated y. A point at exactly the radius (the k-th neighbour itself, up to rounding) is
  outside, so a set against itself has density exactly 1.

The sets: the real image of each caption and every valid generated sample of it
(``caption_sets``: sample s of caption ``<id>`` is ``<id>~s<s>``), a caption's samples each
weighing 1/k_c in the generated set (``caption_weights``), so every caption weighs 1.

Intervals: a caption's real image and its samples are not independent, so a resample draws
captions with replacement and keeps all the images of each (``gen_captions``; ``paired``: one
generated row per caption; otherwise each set is resampled on its own, iid). The k-NN radii
stay those of the full sample (a radius
recomputed on a resample would find a point's duplicate at distance 0). A resampled set has
fewer distinct points, which biases FD (up) and the PRDC values; the interval is the percentile
interval of the resamples shifted by the bootstrap's estimate of that bias (mean of the
resamples − the full-sample value), clipped to the metric's range. Everything is computed on
arrays in memory: at most ``max_samples`` captions' CLS vectors are read from the Zarr stores,
a block of rows at a time. The real side (``RealSide``: centred rows, radii, moments under
every resample) is the same for every model with the same captions: ``real_side`` caches it
under the run's ``derived`` folder (``store/derived.py``), keyed by the real store's version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blindspot_assets.stats.reading import (
    iter_blocks,
    open_store,
    read_rows,
    sample_groups,
    valid_index,
)
from blindspot_assets.store import derived
from blindspot_assets.store.rowstore import RowStore

F64 = NDArray[np.float64]
METRICS = ("fd_dinov2", "precision", "recall", "density", "coverage")
# the range each metric is clipped to (its interval too)
BOUNDS = {
    "fd_dinov2": (0.0, np.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "density": (0.0, np.inf),
    "coverage": (0.0, 1.0),
}
FEATURE_TOKEN = "cls"
_TIE = 1e-9  # a squared distance within this fraction of the squared radius is on the sphere


@dataclass(frozen=True)
class DistributionParams:
    """What the distribution metrics need besides the data (``stats`` block: ``prdc_k``,
    ``distribution_bootstrap``, ``distribution_max_samples``; ``seed``, ``ci_level``,
    ``block_rows`` of ``BlindspotParams``)."""

    k: int = 5
    n_bootstrap: int = 50
    max_samples: int = 10_000
    seed: int = 0
    ci_level: float = 0.95
    block_rows: int = 512


def gaussian_moments(x: F64, weights: F64 | None = None) -> tuple[F64, F64]:
    """Mean and sample covariance (n − 1) of the rows of ``x``, in float64; ``weights``
    (counts summing to n, a bootstrap resample) weigh the rows."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if weights is None:
        mu = x.mean(axis=0)
        xc = x - mu
        return mu, xc.T @ xc / max(n - 1, 1)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    x, w = x[keep], w[keep]
    total = float(w.sum())
    mu = w @ x / total
    xc = x - mu
    return mu, (xc * w[:, None]).T @ xc / max(total - 1, 1)


def trace_sqrt_product(cov1: F64, cov2: F64) -> float:
    """tr (Σ1^½ Σ2 Σ1^½)^½ = Σ_i √λ_i(Σ1 Σ2), from the eigenvalues of the symmetric PSD matrix
    Fᵀ Σ2 F, F a factor of Σ1 = F Fᵀ: its Cholesky factor, or, for a singular Σ1, its
    symmetric square root from ``eigh`` (negative eigenvalues set to 0). Negative eigenvalues of
    Fᵀ Σ2 F (rounding) are set to 0: no complex square root is ever taken."""
    try:
        factor = np.linalg.cholesky(cov1)
    except np.linalg.LinAlgError:
        lam, vec = np.linalg.eigh((cov1 + cov1.T) / 2)
        factor = (vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T
    inner = factor.T @ cov2 @ factor
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: F64, cov1: F64, mu2: F64, cov2: F64) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½, in float64, clipped at 0."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    fd = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2))
    return max(fd - 2 * trace_sqrt_product(cov1, cov2), 0.0)


def _sq_distances(a: F64, b: F64, b_sq: F64) -> F64:
    """Squared Euclidean distances between the rows of ``a`` and of ``b`` (``b_sq`` = ‖b‖²)."""
    d2: F64 = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def knn_sq_radii(x: F64, k: int, block_rows: int = 512) -> F64:
    """Squared distance from each row of ``x`` to its k-th nearest other row."""
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii need more than k = {k} points, got {n}")
    x_sq = (x * x).sum(axis=1)
    out = np.empty(n)
    for a, b in iter_blocks(n, block_rows):
        d2 = _sq_distances(x[a:b], x, x_sq)
        d2[np.arange(b - a), np.arange(a, b)] = 0.0  # itself, at index 0 of the partition
        out[a:b] = np.partition(d2, k, axis=1)[:, k]
    return out


def prdc_replicates(
    real: F64,
    gen: F64,
    real_r2: F64,
    gen_r2: F64,
    w_real: F64,
    w_gen: F64,
    k: int,
    block_rows: int = 512,
) -> dict[str, F64]:
    """Precision, recall, density and coverage under each row of the weights ``w_real`` (B × N)
    and ``w_gen`` (B × M), the squared radii fixed (row 0: the full sample). Precision and
    density are weighted shares of the generated rows (divided by the row's total weight),
    recall and coverage count the generated rows of positive weight. Streams blocks of
    generated rows against every real row; holds N × B and M × B counts."""
    n, m = real.shape[0], gen.shape[0]
    real_sq = (real * real).sum(axis=1)
    n_rep = w_real.shape[0]
    prec_num, dens_num = np.zeros(n_rep), np.zeros(n_rep)
    cover_cnt, recall_cnt = np.zeros((n, n_rep)), np.zeros((n, n_rep))
    for a, b in iter_blocks(m, block_rows):
        d2 = _sq_distances(gen[a:b], real, real_sq)  # (b, N)
        in_real = (d2 < real_r2[None, :] * (1 - _TIE)).astype(np.float64)  # y_j ∈ B(x_i)
        in_gen = (d2 < gen_r2[a:b, None] * (1 - _TIE)).astype(np.float64)  # x_i ∈ B(y_j)
        wg = w_gen[:, a:b].T  # (b, B)
        balls = in_real @ w_real.T  # (b, B): real balls holding y_j, with multiplicity
        prec_num += ((balls > 0) * wg).sum(axis=0)
        dens_num += (balls * wg).sum(axis=0)
        present = (wg > 0).astype(np.float64)
        cover_cnt += in_real.T @ present
        recall_cnt += in_gen.T @ present
    total = w_gen.sum(axis=1)  # M under the full sample of one weight per image
    return {
        "precision": prec_num / total,
        "recall": (w_real * (recall_cnt.T > 0)).sum(axis=1) / n,
        "density": dens_num / (k * total),
        "coverage": (w_real * (cover_cnt.T > 0)).sum(axis=1) / n,
    }


Moments = list[tuple[F64, F64]]


def weighted_moments(x: F64, weights: F64) -> Moments:
    """``gaussian_moments`` of ``x`` under each row of ``weights``."""
    return [gaussian_moments(x, w) for w in weights]


def fd_replicates(real: Moments, gen: Moments) -> F64:
    """FD between each pair of moments (one per row of the weights; row 0 the full sample)."""
    return np.asarray([frechet_distance(*r, *g) for r, g in zip(real, gen, strict=True)])


def bootstrap_weights(n: int, n_resamples: int, rng: np.random.Generator) -> F64:
    """Row 0 all ones (the full sample), then ``n_resamples`` multinomial resample counts."""
    draws = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    return np.vstack([np.ones((1, n)), draws])


def caption_weights(captions: NDArray[np.integer]) -> F64:
    """Per generated row, 1 / (its caption's number of rows): every caption weighs 1 in the
    generated set however many of its samples are valid (1 for every row at one per caption)."""
    counts = np.bincount(captions)
    return np.asarray(1.0 / counts[captions], dtype=np.float64)


def _weights(
    n_real: int,
    n_gen: int,
    paired: bool,
    params: DistributionParams,
    gen_captions: NDArray[np.integer] | None = None,
) -> list[F64]:
    """(real, generated) weights, one row per resample (row 0 the full sample). With
    ``gen_captions`` (the caption, a real row, of each generated row) a resample draws
    captions: a caption's real image and all its generated samples get its count (the
    generated ones divided by the caption's number of samples, ``caption_weights``)."""
    rng = np.random.default_rng(params.seed)
    w_real = bootstrap_weights(n_real, params.n_bootstrap, rng)
    if gen_captions is not None:
        captions = np.asarray(gen_captions, dtype=np.int64)
        if captions.shape != (n_gen,) or captions.min(initial=0) < 0:
            raise ValueError(f"gen_captions must give a caption per generated row ({n_gen})")
        if captions.max(initial=-1) >= n_real or np.unique(captions).size != n_real:
            raise ValueError(f"every one of the {n_real} captions needs a generated row")
        return [w_real, w_real[:, captions] * caption_weights(captions)[None, :]]
    if paired:
        if n_real != n_gen:
            raise ValueError(f"paired sets need as many rows: {n_real} real, {n_gen} generated")
        return [w_real, w_real]
    return [w_real, bootstrap_weights(n_gen, params.n_bootstrap, rng)]


def bootstrap_interval(
    point: float,
    replicates: F64,
    ci_level: float,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> tuple[float, float]:
    """The percentile interval of ``replicates`` shifted by their bias (mean − ``point``),
    clipped to ``bounds``; NaN without replicates."""
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.size == 0 or not np.isfinite(reps).all() or not np.isfinite(point):
        return float("nan"), float("nan")
    shift = float(reps.mean()) - point
    lo, hi = np.quantile(reps, [(1 - ci_level) / 2, (1 + ci_level) / 2]) - shift
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


@dataclass(frozen=True)
class RealSide:
    """What every comparison with one real sample shares: the real rows centred on their mean
    (no metric changes; less rounding), their squared k-NN radii and their moments under each
    row of the weights. The same for every model of a run: ``real_side`` caches it."""

    centre: F64
    rows: F64
    sq_radii: F64
    moments: Moments

    @classmethod
    def of(cls, real: F64, w_real: F64, params: DistributionParams) -> RealSide:
        centre = real.mean(axis=0)
        rows = real - centre
        radii = knn_sq_radii(rows, params.k, params.block_rows)
        return cls(centre, rows, radii, weighted_moments(rows, w_real))

    def arrays(self) -> dict[str, F64]:
        """Its arrays by name (``from_arrays`` gives it back, every value as it was)."""
        return {
            "centre": self.centre,
            "rows": self.rows,
            "sq_radii": self.sq_radii,
            "mu": np.stack([mu for mu, _ in self.moments]),
            "cov": np.stack([cov for _, cov in self.moments]),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> RealSide:
        moments = list(zip(list(arrays["mu"]), list(arrays["cov"]), strict=True))
        return cls(arrays["centre"], arrays["rows"], arrays["sq_radii"], moments)


def metric_replicates(
    real: RealSide, gen: F64, weights: Sequence[F64], params: DistributionParams
) -> dict[str, F64]:
    """Every metric under each row of ``weights`` (real, generated), index 0 the full sample."""
    gen = gen - real.centre
    gen_r2 = knn_sq_radii(gen, params.k, params.block_rows)
    w_real, w_gen = weights
    out = {"fd_dinov2": fd_replicates(real.moments, weighted_moments(gen, w_gen))}
    out |= prdc_replicates(
        real.rows, gen, real.sq_radii, gen_r2, w_real, w_gen, params.k, params.block_rows
    )
    return out


def metric_columns(names: Sequence[str]) -> list[str]:
    """Each metric and its interval: ``name``, ``name_ci_low``, ``name_ci_high``."""
    return [c for n in names for c in (n, f"{n}_ci_low", f"{n}_ci_high")]


def change_columns() -> list[str]:
    """The columns of ``distribution_change`` besides the sample sizes."""
    out = []
    for name in METRICS:
        out += [f"base_{name}", f"candidate_{name}", f"{name}_change"]
        out += [f"{name}_change_ci_low", f"{name}_change_ci_high"]
    return out


def _clip(name: str, value: float) -> float:
    return float(np.clip(value, *BOUNDS[name]))


def summarise(reps: Mapping[str, F64], ci_level: float) -> dict[str, float]:
    """Each metric at the full sample (replicate 0) with its interval from the others."""
    out: dict[str, float] = {}
    for name in METRICS:
        point = _clip(name, reps[name][0])
        lo, hi = bootstrap_interval(point, reps[name][1:], ci_level, BOUNDS[name])
        out |= {name: point, f"{name}_ci_low": lo, f"{name}_ci_high": hi}
    return out


def side_metrics(
    real: RealSide, gen: F64, weights: Sequence[F64], params: DistributionParams
) -> dict[str, Any]:
    """``distribution_metrics`` against a prepared real side and its weights."""
    reps = metric_replicates(real, np.asarray(gen, np.float64), weights, params)
    sizes = {"n_captions": len(real.rows), "n_real": len(real.rows), "n_generated": len(gen)}
    return summarise(reps, params.ci_level) | sizes


def distribution_metrics(
    real: F64,
    gen: F64,
    params: DistributionParams,
    paired: bool = True,
    gen_captions: NDArray[np.integer] | None = None,
) -> dict[str, Any]:
    """``fd_dinov2``, ``precision``, ``recall``, ``density``, ``coverage``, each with
    ``*_ci_low``/``*_ci_high``, and ``n_captions``, ``n_real``, ``n_generated``. ``paired``:
    row i of both sets share a caption (resampled together). ``gen_captions``: the caption
    (real row) of each generated row, several samples per caption (resampled by caption)."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    weights = _weights(len(real), len(gen), paired, params, gen_captions)
    return side_metrics(RealSide.of(real, weights[0], params), gen, weights, params)


def change_metrics(
    real: RealSide,
    sides: Sequence[tuple[F64, Sequence[F64]]],
    params: DistributionParams,
) -> dict[str, Any]:
    """``distribution_change`` against a prepared real side: ``sides`` the (rows, weights) of
    the base and of the candidate, their weights drawn from one resample of the captions."""
    (base, w_base), (cand, w_cand) = sides
    b_reps = metric_replicates(real, base, w_base, params)
    c_reps = metric_replicates(real, cand, w_cand, params)
    out: dict[str, Any] = {}
    for name in METRICS:
        b, c = b_reps[name], c_reps[name]
        change = _clip(name, c[0]) - _clip(name, b[0])
        lo, hi = bootstrap_interval(change, (c - b)[1:], params.ci_level)
        out |= {f"base_{name}": _clip(name, b[0]), f"candidate_{name}": _clip(name, c[0])}
        out |= {f"{name}_change": change, f"{name}_change_ci_low": lo}
        out |= {f"{name}_change_ci_high": hi}
    n = len(real.rows)
    return out | {
        "n_captions": n,
        "n_real": n,
        "n_base_generated": len(base),
        "n_candidate_generated": len(cand),
    }


def distribution_change(
    real: F64,
    base: F64,
    cand: F64,
    params: DistributionParams,
    base_captions: NDArray[np.integer] | None = None,
    cand_captions: NDArray[np.integer] | None = None,
) -> dict[str, Any]:
    """A base and a candidate generated set of the same captions (row i of all three sets share
    a caption, or ``*_captions`` give each generated row's caption): each side's metrics
    (``base_<metric>``, ``candidate_<metric>``) and the change candidate − base
    (``<metric>_change`` with ``_ci_low``/``_ci_high``), one resample of the captions for both
    sides, so the interval is paired; ``n_captions``, ``n_real``, ``n_base_generated``,
    ``n_candidate_generated``."""
    real, base, cand = (np.asarray(a, np.float64) for a in (real, base, cand))
    if base_captions is None and cand_captions is None and len(cand) != len(base):
        raise ValueError(f"base has {len(base)} rows, candidate {len(cand)}")
    w_base = _weights(len(real), len(base), True, params, base_captions)
    w_cand = _weights(len(real), len(cand), True, params, cand_captions)
    shared = RealSide.of(real, w_base[0], params)
    return change_metrics(shared, [(base, w_base), (cand, w_cand)], params)


@dataclass(frozen=True)
class CaptionSets:
    """The captions valid in the real store and with a valid sample in every generated store:
    ``real_rows[i]`` the real row of caption i; per generated store its valid samples, caption
    by caption in sample order (``gen_rows``), and the caption of each (``gen_captions``)."""

    real_rows: NDArray[np.int64]
    gen_rows: list[NDArray[np.int64]]
    gen_captions: list[NDArray[np.int64]]


def caption_sets(
    real: RowStore, gens: Sequence[RowStore], max_samples: int, seed: int
) -> CaptionSets:
    """``CaptionSets`` of a real and some generated stores (a generated id is resolved against
    the real ids: ``<id>`` or ``<id>~s<s>``), captions in real row order; above
    ``max_samples`` captions, a seeded sample of them without replacement (every valid sample
    of each kept)."""
    index = valid_index(real, "real")
    groups = [sample_groups(g, f"generated store {i}", index) for i, g in enumerate(gens)]
    first = sorted(index, key=index.__getitem__)
    ids = [i for i in first if all(i in g for g in groups)]
    if len(ids) > max_samples:
        pick = np.sort(np.random.default_rng(seed).choice(len(ids), max_samples, replace=False))
        ids = [ids[int(p)] for p in pick]
    counts = [np.asarray([len(g[i]) for i in ids], dtype=np.int64) for g in groups]
    return CaptionSets(
        real_rows=np.asarray([index[i] for i in ids], dtype=np.int64),
        gen_rows=[np.asarray([r for i in ids for r in g[i]], dtype=np.int64) for g in groups],
        gen_captions=[np.repeat(np.arange(len(ids), dtype=np.int64), c) for c in counts],
    )


def cls_vectors(store: RowStore, rows: NDArray[Any], block_rows: int) -> F64:
    """Token 0 (CLS) of ``rows`` of a feature store, float64, read a block of rows at a time."""
    tokens = store.array("tokens")
    out = np.empty((rows.size, int(tokens.shape[2])), dtype=np.float64)
    for a, b in iter_blocks(rows.size, block_rows):
        out[a:b] = read_rows(tokens, rows[a:b], (0,))
    return out


REAL_SIDE = "distribution-real-side"  # the kind of its cache entries (store/derived.py)


def real_side_key(rows: NDArray[np.int64], params: DistributionParams) -> str:
    """What a real side depends on besides the store: the rows used and the parameters of its
    radii and resampled moments (not ``ci_level``, not ``max_samples``: the rows say it)."""
    h = hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes())
    h.update(f"v1:{params.k}:{params.n_bootstrap}:{params.seed}:{params.block_rows}".encode())
    return h.hexdigest()[:24]


def real_side(
    store: RowStore,
    rows: NDArray[np.int64],
    w_real: F64,
    params: DistributionParams,
    cache: Path | None = None,
) -> RealSide:
    """The ``RealSide`` of ``rows`` of the real feature store under the weights ``w_real``
    (``_weights`` of ``len(rows)`` captions): from the cache folder (``DataLayout.derived``)
    when it holds the entry of this store version, rows and parameters, else computed (and
    written there)."""
    if cache is None:
        return RealSide.of(cls_vectors(store, rows, params.block_rows), w_real, params)
    where = (cache, REAL_SIDE, "real", derived.store_version(store), real_side_key(rows, params))
    hit = derived.load_arrays(*where)
    if hit is not None:
        return RealSide.from_arrays(hit)
    side = RealSide.of(cls_vectors(store, rows, params.block_rows), w_real, params)
    derived.save_arrays(*where, side.arrays())
    return side


def _lineage(params: DistributionParams, store: RowStore) -> dict[str, Any]:
    encoder = str(store.attrs.get("encoder_id", "unknown"))
    return {"prdc_k": params.k, "feature_token": FEATURE_TOKEN, "feature_encoder": encoder}


def store_metrics(
    real: RowStore | str | Path,
    gen: RowStore | str | Path,
    params: DistributionParams,
    cache: Path | None = None,
) -> dict[str, Any]:
    """``distribution_metrics`` of a generated feature store against the real one over
    ``caption_sets`` — every valid sample of each caption, resampled by caption — with the
    features they were computed on (``feature_token``, ``feature_encoder``) and ``prdc_k``.
    ``cache``: where the real side is cached (``real_side``)."""
    real_s, gen_s = open_store(real), open_store(gen)
    sets = caption_sets(real_s, [gen_s], params.max_samples, params.seed)
    n, m = sets.real_rows.size, sets.gen_rows[0].size
    if n <= params.k:  # too few captions for a k-NN radius: nothing to report
        out = dict.fromkeys(metric_columns(METRICS), float("nan"))
        out |= {"n_captions": n, "n_real": n, "n_generated": m}
        return out | _lineage(params, real_s)
    weights = _weights(n, m, True, params, sets.gen_captions[0])
    side = real_side(real_s, sets.real_rows, weights[0], params, cache)
    gen_x = cls_vectors(gen_s, sets.gen_rows[0], params.block_rows)
    return side_metrics(side, gen_x, weights, params) | _lineage(params, real_s)


def store_change(
    real: RowStore | str | Path,
    base: RowStore | str | Path,
    cand: RowStore | str | Path,
    params: DistributionParams,
    cache: Path | None = None,
) -> dict[str, Any]:
    """``distribution_change`` of two generated feature stores over the captions valid in all
    three (``caption_sets``: every valid sample of each side)."""
    real_s, base_s, cand_s = (open_store(s) for s in (real, base, cand))
    sets = caption_sets(real_s, [base_s, cand_s], params.max_samples, params.seed)
    n = sets.real_rows.size
    if n <= params.k:
        out = dict.fromkeys(change_columns(), float("nan"))
        out |= {"n_captions": n, "n_real": n}
        out |= {"n_base_generated": sets.gen_rows[0].size}
        out |= {"n_candidate_generated": sets.gen_rows[1].size}
        return out | _lineage(params, real_s)
    sides = []
    for store, rows, captions in zip(
        (base_s, cand_s), sets.gen_rows, sets.gen_captions, strict=True
    ):
        weights = _weights(n, rows.size, True, params, captions)
        sides.append((cls_vectors(store, rows, params.block_rows), weights))
    shared = real_side(real_s, sets.real_rows, sides[0][1][0], params, cache)
    return change_metrics(shared, sides, params) | _lineage(params, real_s)

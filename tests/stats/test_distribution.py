"""Distribution metrics (stats/distribution.py) against references written out here: FD with
scipy's matrix square root, PRDC by loops over Naeem et al.'s definitions, and the expectations
those definitions imply on planted sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from blindspot_assets.stats.distribution import (
    DistributionParams,
    bootstrap_interval,
    change_columns,
    distribution_change,
    distribution_metrics,
    store_change,
    store_metrics,
)
from blindspot_assets.store.images import sample_image_id
from blindspot_assets.store.layout import feature_arrays
from blindspot_assets.store.rowstore import RowStore

FAST = DistributionParams(k=5, n_bootstrap=0, block_rows=16)


def same_values(got: dict, want: dict) -> bool:
    """``got`` holds every value of ``want`` exactly (NaN, an interval without resamples, equal
    to NaN)."""
    return all(got[k] == v or (v != v and got[k] != got[k]) for k, v in want.items())


def reference_fd(x: np.ndarray, y: np.ndarray) -> float:
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return float(np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x + cov_y - 2 * root))


def reference_prdc(real: np.ndarray, gen: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al. 2020, literally: open balls of the k-th nearest other point's distance."""

    def kth_radius(points: np.ndarray, i: int) -> float:
        others = [np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i]
        return float(sorted(others)[k - 1])

    r_real = [kth_radius(real, i) for i in range(len(real))]
    r_gen = [kth_radius(gen, j) for j in range(len(gen))]
    dist = [[float(np.linalg.norm(x - y)) for y in gen] for x in real]
    n, m = len(real), len(gen)
    in_real = [[dist[i][j] < r_real[i] for i in range(n)] for j in range(m)]  # y_j in B(x_i)
    return {
        "precision": sum(any(row) for row in in_real) / m,
        "recall": sum(any(dist[i][j] < r_gen[j] for j in range(m)) for i in range(n)) / n,
        "density": sum(sum(row) for row in in_real) / (k * m),
        "coverage": sum(any(in_real[j][i] for j in range(m)) for i in range(n)) / n,
    }


def test_fd_matches_scipy_sqrtm_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(size=(90, 6)) * [1, 2, 0.5, 1, 1, 3] + 0.7
    got = distribution_metrics(x, y, FAST, paired=False)["fd_dinov2"]
    assert got == pytest.approx(reference_fd(x, y), rel=1e-8)


def test_fd_is_zero_against_itself_and_the_squared_shift_when_shifted() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    assert distribution_metrics(x, x.copy(), FAST)["fd_dinov2"] == pytest.approx(0.0, abs=1e-9)
    shifts = [0.25, 0.5, 1.0, 2.0]
    fds = [distribution_metrics(x, x + s, FAST)["fd_dinov2"] for s in shifts]
    # same covariance: FD is exactly ‖shift‖² = 8 s²
    assert fds == pytest.approx([8 * s**2 for s in shifts], rel=1e-8)
    assert all(a < b for a, b in zip(fds, fds[1:], strict=False))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of a singular matrix
def test_fd_of_a_rank_deficient_covariance_stays_real_and_matches() -> None:
    rng = np.random.default_rng(2)
    x = np.hstack([rng.normal(size=(50, 3)), np.zeros((50, 2))])  # two dead dimensions
    y = np.hstack([rng.normal(size=(50, 3)) * 1.5, np.zeros((50, 2))])
    got = distribution_metrics(x, y, FAST)["fd_dinov2"]
    assert np.isfinite(got) and got == pytest.approx(reference_fd(x, y), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_prdc_matches_the_definitions_by_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(45, 3))
    gen = rng.normal(size=(35, 3)) * 1.3 + [0.5, 0, 0]
    got = distribution_metrics(real, gen, FAST, paired=False)
    want = reference_prdc(real, gen, FAST.k)
    assert {m: got[m] for m in want} == pytest.approx(want, abs=1e-12)
    assert got["n_real"] == 45 and got["n_generated"] == 35


def test_prdc_with_another_k_matches_the_definitions() -> None:
    rng = np.random.default_rng(3)
    real, gen = rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 0.3
    params = DistributionParams(k=3, n_bootstrap=0)
    got = distribution_metrics(real, gen, params)
    want = reference_prdc(real, gen, 3)
    assert {m: got[m] for m in want} == pytest.approx(want, abs=1e-12)


def two_clusters(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = np.where(rng.random(n) < 0.5, -10.0, 10.0)
    x = rng.normal(size=(n, 4))
    x[:, 0] += centres
    return x


def test_a_missed_mode_halves_recall_and_coverage_but_not_precision() -> None:
    rng = np.random.default_rng(4)
    real = two_clusters(rng, 600)
    one_mode = rng.normal(size=(600, 4))
    one_mode[:, 0] += 10.0  # only the right-hand cluster
    got = distribution_metrics(real, one_mode, FAST, paired=False)
    share = float(np.mean(real[:, 0] > 0))  # the real share of the drawn mode, ≈ 0.5
    assert got["precision"] > 0.9
    assert got["recall"] == pytest.approx(share, abs=0.05)
    assert got["coverage"] == pytest.approx(share, abs=0.05)
    both = distribution_metrics(real, two_clusters(rng, 600), FAST, paired=False)
    assert both["recall"] > 0.9 and both["coverage"] > 0.9


def test_same_distribution_density_is_one_and_coverage_its_exact_expectation() -> None:
    # Naeem et al.: for identical distributions E[density] = 1 and
    # E[coverage] = 1 − Π_{i<k} (N − 1 − i) / (N + M − 1 − i)
    n = m = 400
    k = FAST.k
    expected = 1 - np.prod([(n - 1 - i) / (n + m - 1 - i) for i in range(k)])
    rng = np.random.default_rng(5)
    runs = [
        distribution_metrics(rng.normal(size=(n, 5)), rng.normal(size=(m, 5)), FAST)
        for _ in range(4)
    ]
    assert np.mean([r["coverage"] for r in runs]) == pytest.approx(expected, abs=0.015)
    assert np.mean([r["density"] for r in runs]) == pytest.approx(1.0, abs=0.05)


def test_a_set_against_itself_is_on_its_own_manifold() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 4))
    got = distribution_metrics(x, x.copy(), FAST)
    assert [got[m] for m in ("precision", "recall", "density", "coverage")] == [1.0] * 4


def test_a_collapsed_set_is_precise_but_covers_little() -> None:
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 3))
    collapsed = rng.normal(size=(300, 3)) * 0.05  # everything at the centre
    got = distribution_metrics(real, collapsed, FAST, paired=False)
    assert got["precision"] == 1.0
    assert got["density"] > 1.0  # at the mode, more real neighbourhoods overlap than k
    assert got["coverage"] < 0.2
    assert got["recall"] < 0.2


def test_bootstrap_interval_shifts_the_percentiles_by_the_bias() -> None:
    reps = np.arange(1.0, 102.0)  # mean 51
    lo, hi = bootstrap_interval(50.0, reps, 0.9)
    assert (lo, hi) == pytest.approx((np.quantile(reps, 0.05) - 1, np.quantile(reps, 0.95) - 1))
    assert bootstrap_interval(50.0, reps, 0.9, (0.0, 60.0))[1] == 60.0
    assert np.isnan(bootstrap_interval(1.0, np.array([]), 0.9)[0])


def test_intervals_cover_the_full_sample_value_and_narrow_with_n() -> None:
    params = DistributionParams(k=5, n_bootstrap=60, seed=3, block_rows=64)
    rng = np.random.default_rng(8)
    widths: dict[int, dict[str, float]] = {}
    for n in (150, 600):
        real = rng.normal(size=(n, 4))
        gen = rng.normal(size=(n, 4)) * 1.2 + 0.4
        got = distribution_metrics(real, gen, params)
        for m in ("fd_dinov2", "precision", "recall", "density", "coverage"):
            assert got[f"{m}_ci_low"] <= got[m] <= got[f"{m}_ci_high"], (n, m)
        widths[n] = {m: got[f"{m}_ci_high"] - got[f"{m}_ci_low"] for m in ("fd_dinov2", "recall")}
    for m in ("fd_dinov2", "recall"):
        assert widths[600][m] < 0.75 * widths[150][m], m


def test_seeded_intervals_repeat() -> None:
    params = DistributionParams(n_bootstrap=20, seed=11)
    rng = np.random.default_rng(9)
    real, gen = rng.normal(size=(80, 3)), rng.normal(size=(80, 3)) + 0.2
    assert distribution_metrics(real, gen, params) == distribution_metrics(real, gen, params)


def test_change_between_two_sets_is_paired_and_zero_for_identical_sets() -> None:
    params = DistributionParams(k=5, n_bootstrap=40, seed=0)
    rng = np.random.default_rng(10)
    real = rng.normal(size=(200, 4))
    base = real + rng.normal(size=(200, 4)) * 0.3
    same = distribution_change(real, base, base.copy(), params)
    sizes = ["n_captions", "n_real", "n_base_generated", "n_candidate_generated"]
    assert list(same) == [*change_columns(), *sizes]
    for m in ("fd_dinov2", "precision", "recall", "density", "coverage"):
        assert same[f"{m}_change"] == 0.0
        assert same[f"{m}_change_ci_low"] == same[f"{m}_change_ci_high"] == 0.0
    shifted = base + 1.0
    out = distribution_change(real, base, shifted, params)
    alone = distribution_metrics(real, shifted, params)
    assert out["candidate_fd_dinov2"] == pytest.approx(alone["fd_dinov2"])
    difference = out["candidate_fd_dinov2"] - out["base_fd_dinov2"]
    assert out["fd_dinov2_change"] == pytest.approx(difference)
    assert out["fd_dinov2_change_ci_low"] > 0  # four units of squared shift: clearly worse
    assert out["coverage_change_ci_high"] < 0


def write_store(
    path: Path, ids: list[str], tokens: np.ndarray, valid: np.ndarray, fingerprint: str = "test"
) -> RowStore:
    store = RowStore.create_or_resume(
        path,
        ids,
        feature_arrays(tokens.shape[1], tokens.shape[2]),
        attrs={"fingerprint": fingerprint, "encoder_id": "tiny-dino"},
        chunk_rows=8,
    )
    status = ["ok" if v else "decode_error" for v in valid]
    store.write_block(0, {"tokens": tokens.astype(np.float16)}, valid, status)
    store.finish()  # a rebuild (another fingerprint) replaces the store here
    return store


def test_store_metrics_read_the_cls_token_of_the_valid_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 60
    ids = [f"img{i:03d}" for i in range(n)]
    real_tok = rng.normal(size=(n, 5, 3))
    gen_tok = rng.normal(size=(n, 5, 3)) + 0.5
    gen_valid = np.ones(n, bool)
    gen_valid[[3, 17]] = False
    order = rng.permutation(n)  # the generated store in another row order
    write_store(tmp_path / "real.zarr", ids, real_tok, np.ones(n, bool))
    write_store(tmp_path / "gen.zarr", [ids[i] for i in order], gen_tok[order], gen_valid[order])
    got = store_metrics(tmp_path / "real.zarr", tmp_path / "gen.zarr", FAST)
    keep = [i for i in range(n) if gen_valid[i]]
    real_cls = real_tok[keep, 0].astype(np.float16).astype(np.float64)
    gen_cls = gen_tok[keep, 0].astype(np.float16).astype(np.float64)
    want = distribution_metrics(real_cls, gen_cls, FAST)
    assert same_values(got, want)  # one sample per caption: the paired rows exactly
    assert got["n_captions"] == got["n_real"] == got["n_generated"] == n - 2
    assert (got["feature_token"], got["feature_encoder"], got["prdc_k"]) == ("cls", "tiny-dino", 5)
    capped = store_metrics(
        tmp_path / "real.zarr", tmp_path / "gen.zarr", DistributionParams(max_samples=20)
    )
    assert capped["n_real"] == capped["n_generated"] == 20


def test_one_sample_per_caption_as_captions_is_the_paired_bootstrap_exactly() -> None:
    params = DistributionParams(k=5, n_bootstrap=30, seed=4)
    rng = np.random.default_rng(12)
    real, gen = rng.normal(size=(90, 3)), rng.normal(size=(90, 3)) + 0.3
    by_caption = distribution_metrics(real, gen, params, gen_captions=np.arange(90))
    assert by_caption == distribution_metrics(real, gen, params)


def several_samples_world(
    rng: np.random.Generator, n: int, k: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Real images in two modes (x₀ at ±10); sample 0 of every caption in the right-hand mode
    (a model that draws the other mode on some seeds only), samples 1 … k−1 in the caption's
    own real mode."""
    real = two_clusters(rng, n)
    samples = []
    for s in range(k):
        y = rng.normal(size=(n, 4))
        y[:, 0] += 10.0 if s == 0 else np.sign(real[:, 0]) * 10.0
        samples.append(y)
    return real, samples


def test_several_samples_per_caption_use_every_valid_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    n, k = 120, 3
    real, samples = several_samples_world(rng, n, k)
    ids = [f"img{i:03d}" for i in range(n)]
    gen_ids = [sample_image_id(i, s) for i in ids for s in range(k)]
    gen = np.stack(samples, axis=1).reshape(n * k, 4)  # caption by caption, samples in order
    valid = np.ones(n * k, bool)
    valid[[5 * k + 2, 9 * k]] = False  # one sample of two captions
    valid[20 * k : 21 * k] = False  # every sample of caption 20: the caption drops out
    tok = np.zeros((n * k, 2, 4))
    tok[:, 0] = gen
    write_store(tmp_path / "real.zarr", ids, np.stack([real, real], axis=1), np.ones(n, bool))
    write_store(tmp_path / "gen.zarr", gen_ids, tok, valid)
    got = store_metrics(tmp_path / "real.zarr", tmp_path / "gen.zarr", FAST)
    assert (got["n_captions"], got["n_real"], got["n_generated"]) == (n - 1, n - 1, n * k - 5)
    # the reference: all valid samples, each caption's rows sharing its resample
    keep = np.delete(np.arange(n), 20)
    rows = np.flatnonzero(valid)
    to16 = lambda a: a.astype(np.float16).astype(np.float64)  # noqa: E731 — the stored dtype
    captions = np.searchsorted(keep, rows // k)
    want = distribution_metrics(to16(real[keep]), to16(gen[rows]), FAST, gen_captions=captions)
    assert same_values(got, want)
    # sample 0 alone misses the left-hand mode; all samples reach it
    first = distribution_metrics(to16(real[keep]), to16(samples[0][keep]), FAST)
    assert first["recall"] < 0.65 and first["coverage"] < 0.65
    assert got["recall"] > 0.9 and got["coverage"] > 0.9
    assert got["fd_dinov2"] < 0.5 * first["fd_dinov2"]


def test_the_caption_bootstrap_is_wider_than_an_iid_one_of_correlated_samples() -> None:
    # each caption's k samples lie almost on one point: they are one draw, not k
    params = DistributionParams(k=5, n_bootstrap=60, seed=5, block_rows=256)
    rng = np.random.default_rng(14)
    n, k = 150, 4
    real = rng.normal(size=(n, 4))
    centres = rng.normal(size=(n, 4)) * 1.3 + 0.4
    gen = np.repeat(centres, k, axis=0) + rng.normal(size=(n * k, 4)) * 0.05
    captions = np.repeat(np.arange(n), k)
    clustered = distribution_metrics(real, gen, params, gen_captions=captions)
    iid = distribution_metrics(real, gen, params, paired=False)
    for metric, factor in (("fd_dinov2", 1.3), ("recall", 1.5)):
        width = {
            name: r[f"{metric}_ci_high"] - r[f"{metric}_ci_low"]
            for name, r in (("clustered", clustered), ("iid", iid))
        }
        assert width["clustered"] > factor * width["iid"], (metric, width)
    assert clustered["n_captions"] == n and clustered["n_generated"] == n * k


def test_the_real_side_is_cached_per_store_version_and_rows(tmp_path: Path) -> None:
    params = DistributionParams(k=5, n_bootstrap=20, seed=2, block_rows=16)
    rng = np.random.default_rng(15)
    n = 50
    ids = [f"img{i:03d}" for i in range(n)]
    real_tok = rng.normal(size=(n, 2, 3))
    write_store(tmp_path / "real.zarr", ids, real_tok, np.ones(n, bool))
    for name, shift in (("a", 0.3), ("b", 0.8)):
        tok = rng.normal(size=(n, 2, 3)) + shift
        write_store(tmp_path / f"{name}.zarr", ids, tok, np.ones(n, bool))
    stores = [tmp_path / f"{x}.zarr" for x in ("real", "a", "b")]
    cache = tmp_path / "derived"
    plain = [store_metrics(stores[0], s, params) for s in stores[1:]]
    cached = [store_metrics(stores[0], s, params, cache) for s in stores[1:]]
    assert cached == plain
    pair = store_change(*stores, params, cache)
    assert pair == store_change(*stores, params)
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 1  # one real side for both models and the pair
    # a hit reads no real token: rows rewritten in place (the same store version) are not seen
    write_store(stores[0], ids, real_tok * 2.0, np.ones(n, bool))
    assert store_metrics(stores[0], stores[1], params, cache) == cached[0]
    assert store_metrics(stores[0], stores[1], params)["fd_dinov2"] != cached[0]["fd_dinov2"]
    # new real features (another fingerprint): a new version, the old entry removed
    write_store(stores[0], ids, real_tok + 1.0, np.ones(n, bool), fingerprint="other")
    fresh = store_metrics(stores[0], stores[1], params, cache)
    assert fresh == store_metrics(stores[0], stores[1], params)
    assert fresh["fd_dinov2"] != cached[0]["fd_dinov2"]
    now = sorted(cache.rglob("*.npz"))
    assert len(now) == 1 and now[0].parent != entries[0].parent

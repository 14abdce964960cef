"""Planted near copies in the demo world are found; ordinary generations are not.

Real images are demo scenes; each "generation" redraws its caption's scene (new layout) — the
exchangeable null — except planted copies of a real image, of three kinds (exact; JPEG at
quality 60; an 8 % border crop resized back), of the caption's own image or of another one.
Features come from the tiny demo DINOv2; images pass through JPEG q75 before the encoder, as
the pipeline's image policy does.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from blindspot_assets.config import EncoderSpec
from blindspot_assets.demo.world import caption_of, parse_caption, render, sample_scene
from blindspot_assets.encoders.dinov2 import load_encoder
from blindspot_assets.stats import find_memorization_candidates
from blindspot_assets.stats.memorization import ConeIndex
from tests.stats.conftest import write_codes, write_features

N = 400


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(im: Image.Image, border: float = 0.08) -> Image.Image:
    w, h = im.size
    dx, dy = round(w * border), round(h * border)
    return im.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)


KINDS = {"exact": lambda im: im.copy(), "jpeg60": lambda im: _jpeg(im, 60), "crop8": _crop}


def _save_set(folder: Path, ids: list[str], images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for image_id, im in zip(ids, images, strict=True):
        im.save(folder / f"{image_id}.png")
    pl.DataFrame(
        {"image_id": ids, "path": [f"{i}.png" for i in ids], "status": ["ok"] * len(ids)}
    ).write_parquet(folder / "manifest.parquet")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("memo")
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(N)]
    ids = [f"r{i:04d}" for i in range(N)]
    real = [render(s, seed=i) for i, s in enumerate(scenes)]
    gen = [render(parse_caption(caption_of(s)), seed=100_000 + i) for i, s in enumerate(scenes)]
    planted: dict[str, tuple[str, bool, str]] = {}
    order = rng.permutation(N)
    j = 0
    for kind, copy in KINDS.items():
        for own in (True, False):
            for _ in range(10):
                g = int(order[j])
                j += 1
                src = g if own else (g + 37) % N
                gen[g] = copy(real[src])
                planted[ids[g]] = (kind, own, ids[src])
    encoder = load_encoder(
        EncoderSpec(model_id=str(root / "tiny"), image_size=64, init_random_tiny=True, device="cpu")
    )

    def features(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate(
            [
                encoder.encode([_jpeg(im, 75) for im in images[i : i + 100]])
                for i in range(0, N, 100)
            ]
        )

    real_f, gen_f = features(real), features(gen)
    # a random non-negative "SAE" (ξ = Σ_t relu(x_t W)) for the concept-space evidence
    w = np.random.default_rng(1).normal(size=(real_f.shape[2], 32)).astype(np.float32)
    return {
        "planted": planted,
        "ids": ids,
        "real_f": write_features(root / "real.zarr", ids, real_f, chunk_rows=64),
        "gen_f": write_features(root / "gen.zarr", ids, gen_f, chunk_rows=64),
        "real_c": write_codes(root / "rc.zarr", ids, np.maximum(real_f @ w, 0).sum(1)),
        "gen_c": write_codes(root / "gc.zarr", ids, np.maximum(gen_f @ w, 0).sum(1)),
        "real_i": _save_set(root / "img_real", ids, real),
        "gen_i": _save_set(root / "img_gen", ids, gen),
    }


def _score(df: pl.DataFrame, planted: dict[str, tuple[str, bool, str]]) -> dict[str, float]:
    flagged = {r["gen_image_id"]: r["nearest_real_id"] for r in df.iter_rows(named=True)}
    found = {k: flagged.get(g) == src for g, (k, _, src) in planted.items() for k in [k]}
    by_kind = {
        kind: float(np.mean([flagged.get(g) == src for g, (k, _, src) in planted.items()
                             if k == kind]))
        for kind in KINDS
    }  # fmt: skip
    false = [g for g in flagged if g not in planted]
    return {"found": float(np.mean(list(found.values()))), **by_kind,
            "false": len(false) / (N - len(planted))}  # fmt: skip


def test_planted_near_copies_are_found_with_few_false_candidates(
    world: dict[str, object],
) -> None:
    planted = world["planted"]
    assert isinstance(planted, dict)
    every = find_memorization_candidates(
        world["real_f"], world["gen_f"], real_images=world["real_i"], gen_images=world["gen_i"],
        real_codes=world["real_c"], gen_codes=world["gen_c"], block_rows=96, all_rows=True,
    )  # fmt: skip
    assert every.height == N
    cands = every.filter("is_candidate")
    score = _score(cands, planted)
    print(
        "memorisation scores", score, "expected false", float(every["expected_false_candidates"][0])
    )
    assert score["found"] >= 0.9, score
    assert score["false"] <= 0.01, score
    assert min(score[k] for k in KINDS) >= 0.8, score
    # the expected false count under exchangeability is reported, and small here
    expected = float(every["expected_false_candidates"][0])
    assert 0.001 * N - 1e-9 <= expected <= 0.001 * N + 1e-9  # n · q with a resolved quantile
    # copies of the image's own caption vs another caption's; concept-space evidence
    own = cands.filter(pl.col("gen_image_id").is_in([g for g, p in planted.items() if p[1]]))
    other = cands.filter(pl.col("gen_image_id").is_in([g for g, p in planted.items() if not p[1]]))
    assert own["is_own_pair"].all() and not other["is_own_pair"].any()
    exact = [g for g, p in planted.items() if p[0] == "exact"]
    assert (cands.filter(pl.col("gen_image_id").is_in(exact))["concept_distance"] < 1e-2).all()
    assert (other["own_concept_distance"] > other["concept_distance"]).all()
    # lowest distances first; the default (candidates only) is the same rows
    assert every["distance"].is_sorted()
    only = find_memorization_candidates(
        world["real_f"], world["gen_f"], real_images=world["real_i"],
        gen_images=world["gen_i"], block_rows=1000,
    )  # fmt: skip
    assert set(only["gen_image_id"]) == set(cands["gen_image_id"])


@pytest.mark.parametrize(("quantile", "min_recall"), [(0.01, 0.95), (0.001, 0.95)])
def test_recall_of_planted_copies_at_each_false_rate(
    world: dict[str, object], quantile: float, min_recall: float
) -> None:
    """At the default false rate (1 per 1,000 generated images) and at 1 per 100, exact, JPEG
    and border-cropped copies are found at ≥ 95 % each (measured: docs/method.md §7)."""
    planted = world["planted"]
    assert isinstance(planted, dict)
    df = find_memorization_candidates(
        world["real_f"], world["gen_f"], calibration_quantile=quantile,
        real_images=world["real_i"], gen_images=world["gen_i"], block_rows=200,
    )  # fmt: skip
    score = _score(df, planted)
    print("memorisation recall at", quantile, score)
    assert score["found"] >= min_recall, score
    assert min(score[k] for k in KINDS) >= min_recall, score


def test_patch_evidence_alone_finds_re_encoded_copies(world: dict[str, object]) -> None:
    """Without the image folders, DINOv2 patch maps alone still find exact and JPEG copies."""
    planted = world["planted"]
    assert isinstance(planted, dict)
    df = find_memorization_candidates(world["real_f"], world["gen_f"], block_rows=128)
    score = _score(df, planted)
    assert score["exact"] == 1.0 and score["jpeg60"] >= 0.9, score
    assert score["false"] <= 0.01, score
    assert set(df["evidence"]) <= {"patch"}


def _clustered_unit_vectors(n: int, dim: int, n_groups: int, seed: int) -> torch.Tensor:
    centres = torch.randn(n_groups, dim, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = centres[torch.randint(n_groups, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def test_cone_index_returns_the_brute_force_neighbours() -> None:
    """The pruned search answers exactly what the full similarity matrix answers, with and
    without excluding each query's own row, while scanning a fraction of the lists."""
    refs = _clustered_unit_vectors(3000, 32, 40, seed=1)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5  # ids are store rows, not positions
    queries = _clustered_unit_vectors(500, 32, 40, seed=2)
    queries[:50] = torch.nn.functional.normalize(refs[:50] + 0.01 * torch.randn(50, 32), dim=1)
    index = ConeIndex(refs, ids)
    best, arg = index.search(queries, chunk=128)
    full = queries @ refs.T
    np.testing.assert_array_equal(arg.numpy(), ids[full.argmax(dim=1).numpy()])
    torch.testing.assert_close(best, full.max(dim=1).values)
    assert (arg[:50].numpy() == ids[:50]).all()  # the planted near copies
    assert index.lists_scanned < 0.25 * 500 * len(index.centres)  # a few lists per query
    # self excluded: queries are the references themselves
    best_self, arg_self = index.search(refs[:400], exclude=ids[:400])
    full_self = refs[:400] @ refs.T
    full_self[torch.arange(400), torch.arange(400)] = -torch.inf
    np.testing.assert_array_equal(arg_self.numpy(), ids[full_self.argmax(dim=1).numpy()])
    torch.testing.assert_close(best_self, full_self.max(dim=1).values)


def _hierarchical_unit_vectors(n: int, dim: int, per_content: int, seed: int) -> torch.Tensor:
    """n / per_content contents at the leaves of a tree that branches 4 ways, each node a
    Gaussian step from its parent (spread 0.45 to the contents, 0.7 above, 1.1 higher up);
    the variants, Gaussian steps of 0.25 around a random content, drawn with ``seed``."""
    g = torch.Generator().manual_seed(0)
    k = n // per_content
    depth = math.ceil(math.log(k, 4))
    nodes = torch.randn(1, dim, generator=g)
    for level in range(depth):
        spread = (0.45, 0.7, 1.1)[min(2, depth - 1 - level)]
        nodes = nodes.repeat_interleave(4, dim=0)
        nodes = nodes + spread * torch.randn(nodes.shape, generator=g)
    g = torch.Generator().manual_seed(seed)
    x = nodes[torch.randint(k, (n,), generator=g)]
    return torch.nn.functional.normalize(x + 0.25 * torch.randn(x.shape, generator=g), dim=1)


def _brute(queries: torch.Tensor, refs: torch.Tensor, ids: np.ndarray, exclude: object = None):
    full = queries @ refs.T
    if exclude is not None:
        full[
            torch.from_numpy(np.asarray(exclude))[:, None] == torch.from_numpy(ids)[None, :]
        ] = -torch.inf
    best, at = full.max(dim=1)
    return best, ids[at.numpy()]


def test_cone_tree_is_exact_with_and_without_exclude_and_reads_few_lists() -> None:
    """A tree several levels deep answers what the full similarity matrix answers — with each
    image's descriptors at two zooms sharing its id, and with that id excluded — while reading
    a small fraction of the leaves and comparing a fraction of the node centres."""
    images = _hierarchical_unit_vectors(2000, 32, 25, seed=1)
    zoomed = torch.nn.functional.normalize(images + 0.05 * torch.randn(images.shape), dim=1)
    refs = torch.cat([images, zoomed])
    ids = np.tile(np.arange(2000, dtype=np.int64) * 3 + 1, 2)
    index = ConeIndex(refs, ids, leaf_size=32, fanout=4)
    assert len(index.levels) >= 4  # root, two levels of 4-way splits, leaves
    assert int(index.offsets.diff().max()) <= 32
    n_nodes = sum(len(level.centres) for level in index.levels[1:])
    queries = _hierarchical_unit_vectors(2000, 32, 25, seed=2)[:600]
    queries[:60] = torch.nn.functional.normalize(images[:60] + 0.01 * torch.randn(60, 32), dim=1)
    best, arg = index.search(queries, chunk=256)
    ref_best, ref_arg = _brute(queries, refs, ids)
    np.testing.assert_array_equal(arg.numpy(), ref_arg)
    torch.testing.assert_close(best, ref_best)
    assert (arg[:60].numpy() == ids[:60]).all()  # the planted near copies
    assert index.lists_scanned < 0.1 * 600 * len(index.centres)
    assert index.centres_compared < 0.5 * 600 * n_nodes
    # self excluded: both zooms of each query's own image are skipped
    best_self, arg_self = index.search(images[:500], exclude=ids[:500])
    ref_best, ref_arg = _brute(images[:500], refs, ids, ids[:500])
    np.testing.assert_array_equal(arg_self.numpy(), ref_arg)
    torch.testing.assert_close(best_self, ref_best)
    assert (arg_self.numpy() != ids[:500]).all()


def test_cone_tree_cones_hold_every_vector_below_them() -> None:
    """Each node's cone (centre, half-angle) holds every vector of its subtree: the bound the
    search prunes with is never below a similarity it skips."""
    refs = _hierarchical_unit_vectors(3000, 16, 20, seed=3)
    index = ConeIndex(refs, np.arange(3000), leaf_size=16, fanout=4)
    for depth, level in enumerate(index.levels):
        starts = torch.arange(len(level.centres) + 1)
        for deeper in index.levels[depth:]:  # down to the leaves' vector offsets
            starts = deeper.children[starts]
        for j in range(len(level.centres)):
            a, b = int(starts[j]), int(starts[j + 1])
            angles = torch.arccos((index.vectors[a:b] @ level.centres[j]).clamp(-1.0, 1.0))
            assert float(angles.max()) <= float(level.half_angle[j]) + 1e-3


def test_cone_tree_stays_exact_without_structure() -> None:
    """Uniform directions: no cone can be skipped, the answer is still the brute-force one."""
    refs = torch.nn.functional.normalize(torch.randn(1500, 8), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(300, 8), dim=1)
    ids = np.arange(1500, dtype=np.int64)
    best, arg = ConeIndex(refs, ids, leaf_size=16, fanout=4).search(queries)
    ref_best, ref_arg = _brute(queries, refs, ids)
    np.testing.assert_array_equal(arg.numpy(), ref_arg)
    torch.testing.assert_close(best, ref_best)


def test_cone_tree_is_exact_among_near_ties() -> None:
    """Dense directions in three dimensions: every query has dozens of references within 1e-2
    of its best cosine, spread over many leaves. The pruning may only skip a leaf that cannot
    beat the best so far; a bound loosened by 1e-2 skips the leaf of the true nearest one."""
    g = torch.Generator().manual_seed(0)
    refs = torch.nn.functional.normalize(torch.randn(5000, 3, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=1)
    ids = np.arange(5000, dtype=np.int64)
    ref_best, ref_arg = _brute(queries, refs, ids)
    ties = ((queries @ refs.T) > ref_best[:, None] - 1e-2).sum(dim=1)
    assert int(ties.min()) >= 10  # near-ties for every query
    best, arg = ConeIndex(refs, ids, leaf_size=16, fanout=4).search(queries)
    np.testing.assert_array_equal(arg.numpy(), ref_arg)
    torch.testing.assert_close(best, ref_best)


def test_cone_tree_work_per_query_does_not_grow_with_new_content() -> None:
    """Four times the images, four times the contents (each as big): a query reads about as
    many leaves, and its walk compares far fewer than four times as many centres. Its first
    step compares every cell (one per ``fanout · leaf_size`` vectors): that part grows ∝ n."""
    per_query = []
    for n in (2000, 8000):
        refs = _hierarchical_unit_vectors(n, 32, 25, seed=1)
        queries = _hierarchical_unit_vectors(n, 32, 25, seed=2)
        index = ConeIndex(refs, np.arange(n), leaf_size=32, fanout=4)
        index.search(queries)
        per_query.append((index.lists_scanned / n, index.centres_compared / n))
        cells = index.levels[index._entry].centres
        assert index.cells_compared == n * len(cells)
        assert len(cells) >= n / 128  # k-means cells, some cut into tight pieces
    (lists_small, centres_small), (lists_big, centres_big) = per_query
    assert lists_big < 1.5 * lists_small, per_query
    assert centres_big < 2 * centres_small, per_query


def _turned(parents: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Each unit row of ``parents`` turned by ``degrees`` towards a random direction."""
    u = torch.randn(parents.shape, generator=g)
    u = torch.nn.functional.normalize(u - (u * parents).sum(1, keepdim=True) * parents, dim=1)
    return math.cos(math.radians(degrees)) * parents + math.sin(math.radians(degrees)) * u


def _themed_unit_vectors(n_themes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random, unrelated "themes" (far more than a node's fanout), 10 contents 35° from each,
    ~20 variants 15° from a content (drawn with ``seed``); the vectors and their theme."""
    g = torch.Generator().manual_seed(0)
    themes = torch.nn.functional.normalize(torch.randn(n_themes, 32, generator=g), dim=1)
    contents = _turned(themes.repeat_interleave(10, dim=0), 35.0, g)
    g = torch.Generator().manual_seed(seed)
    content = torch.randint(len(contents), (20 * len(contents),), generator=g)
    return _turned(contents[content], 15.0, g), content // 10


def test_cone_tree_keeps_unrelated_groups_apart() -> None:
    """96 unrelated themes under a 4-way tree: a tree split top-down 4 ways at a time mixes
    fragments of several themes in its nodes and then its leaves (69 mixed leaves here, 20
    leaves read per query); cells cut by one k-means and grouped bottom-up keep every leaf
    within one content's spread, and a query reads about two leaves, exactly."""
    refs, theme = _themed_unit_vectors(96, seed=1)
    queries, _ = _themed_unit_vectors(96, seed=2)
    index = ConeIndex(refs, np.arange(len(refs)), leaf_size=32, fanout=4)
    leaf_theme = theme[index.ids]
    bounds = index.offsets.tolist()
    mixed = [
        len(leaf_theme[a:b].unique()) > 1 for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    assert not any(mixed)
    assert float(index.half_angle.max()) < math.radians(20.0)  # variants lie 15° from content
    best, arg = index.search(queries)
    assert index.lists_scanned < 3 * len(queries)
    ref_best, ref_arg = _brute(queries[:2000], refs, np.arange(len(refs)))
    np.testing.assert_array_equal(arg[:2000].numpy(), ref_arg)
    torch.testing.assert_close(best[:2000], ref_best)


def test_reproduced_on_s_of_k_seeds() -> None:
    """Per generated sample, how many of its caption's samples reproduce the same real image:
    caption a copies r1 on seeds 0 and 2 of 3, b copies two different images (no sample agrees),
    c is a candidate on its only seed (k = 1: reproduced on 1 of 1)."""
    from blindspot_assets.stats.memorization import with_seed_counts

    df = pl.DataFrame(
        {
            "gen_image_id": ["a", "a~s1", "a~s2", "b", "b~s1", "c"],
            "nearest_real_id": ["r1", "x", "r1", "b", "r2", "c"],
            "is_candidate": [True, False, True, True, True, True],
        }
    )
    out = with_seed_counts(df, {"a", "b", "c", "r1", "r2", "x"})
    assert out["caption_id"].to_list() == ["a", "a", "a", "b", "b", "c"]
    assert out["sample"].to_list() == [0, 1, 2, 0, 1, 0]
    assert out["n_seeds"].to_list() == [3, 3, 3, 2, 2, 1]
    assert out["reproduced_seeds"].to_list() == [2, 0, 2, 1, 1, 1]
    assert out["reproduced_across_seeds"].to_list() == [True, False, True, False, False, False]
    assert out["is_own_pair"].to_list() == [False, False, False, True, False, True]


def test_a_caption_that_copies_one_image_on_both_seeds_is_flagged(
    world: dict[str, object], tmp_path: Path
) -> None:
    """Two images per caption: five captions copy their own real image exactly on both seeds,
    five on seed 0 only (seed 1 a redraw); every sample is searched, and only the first five
    are reproduced on 2 of 2 seeds."""
    from blindspot_assets.store.images import sample_image_id
    from blindspot_assets.store.rowstore import RowStore

    planted, ids = world["planted"], world["ids"]
    assert isinstance(planted, dict) and isinstance(ids, list)
    tokens = np.asarray(RowStore.open(world["gen_f"]).array("tokens")[:])
    exact = sorted(g for g, p in planted.items() if p[0] == "exact" and p[1])
    both, once = set(exact[:5]), set(exact[5:])
    redraws = [i for i in ids if i not in planted]
    row = {i: r for r, i in enumerate(ids)}
    second = [
        tokens[row[i]] if i in both else tokens[row[redraws[(k * 7 + 1) % len(redraws)]]]
        for k, i in enumerate(ids)
    ]
    gen_ids = ids + [sample_image_id(i, 1) for i in ids]
    store = write_features(tmp_path / "k2.zarr", gen_ids, np.concatenate([tokens, second]))
    df = find_memorization_candidates(world["real_f"], store, block_rows=200)
    mine = df.filter(pl.col("caption_id").is_in(exact))
    assert set(mine.filter(pl.col("sample") == 0)["caption_id"]) == set(exact)
    assert set(mine.filter(pl.col("sample") == 1)["caption_id"]) == both
    assert (mine["n_seeds"] == 2).all()
    across = mine.filter("reproduced_across_seeds")
    assert set(across["caption_id"]) == both and (across["reproduced_seeds"] == 2).all()
    assert (mine.filter(pl.col("caption_id").is_in(once))["reproduced_seeds"] == 1).all()
    assert not df.filter(~pl.col("caption_id").is_in(list(planted)))[
        "reproduced_across_seeds"
    ].any()

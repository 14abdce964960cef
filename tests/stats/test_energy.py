"""Energy, nb_fire and top images on hand-written row stores."""

from __future__ import annotations

import numpy as np

from blindspot_assets.stats import concept_energy, top_images_per_concept
from blindspot_assets.stats.top_images import TopKAccumulator


def test_concept_energy_is_the_formula(codes_writer) -> None:  # type: ignore[no-untyped-def]
    xi = np.array([[1.0, 0.0, 0.5], [2.0, 0.25, 0.0], [4.0, 0.0, 0.0], [8.0, 1.0, 3.0]])
    nfire = np.array([[2, 0, 1], [3, 1, 0], [5, 0, 0], [7, 2, 9]])
    valid = np.array([True, True, False, True])  # row 2 could not be decoded
    path = codes_writer(["a", "b", "c", "d"], xi, nfire_nc=nfire, valid_n=valid, chunk_rows=2)
    for block_rows in (1, 2, 1024):
        energy, nb_fire, n = concept_energy(path, block_rows=block_rows)
        assert n == 3
        assert energy.tolist() == [(1.0 + 2.0 + 8.0) / 3, (0.25 + 1.0) / 3, (0.5 + 3.0) / 3]
        assert nb_fire.tolist() == [12, 3, 10]
    energy, nb_fire, n = concept_energy(path, rows=np.array([2]))
    assert (energy.tolist(), nb_fire.tolist(), n) == ([4.0, 0.0, 0.0], [5, 0, 0], 1)


def test_top_images_rank_by_xi_and_skip_zeros_and_invalid(codes_writer) -> None:  # type: ignore[no-untyped-def]
    xi = np.array([[1.0, 0.0], [3.0, 0.0], [9.0, 0.0], [2.0, 0.5], [5.0, 0.0]])
    valid = np.array([True, True, False, True, True])
    path = codes_writer(["a", "b", "c", "d", "e"], xi, valid_n=valid, chunk_rows=2)
    top = top_images_per_concept(path, k=3, block_rows=2)
    assert top.columns == ["concept", "image_id", "rank", "score"]
    c0 = top.filter(concept=0)
    assert c0["image_id"].to_list() == ["e", "b", "d"]
    assert c0["rank"].to_list() == [1, 2, 3] and c0["score"].to_list() == [5.0, 3.0, 2.0]
    assert top.filter(concept=1)["image_id"].to_list() == ["d"]  # only scores > 0
    only1 = top_images_per_concept(path, k=2, concepts=[1])
    assert only1["concept"].to_list() == [1] and only1["image_id"].to_list() == ["d"]


def test_streamed_top_k_equals_the_full_sort() -> None:
    """Over many blocks (after the first, only concepts the block can improve are merged) the
    kept top k per concept is the top k of all rows, rows included."""
    rng = np.random.default_rng(3)
    scores = rng.random((900, 40)).astype(np.float32) * (rng.random((900, 40)) < 0.3)
    scores[600:, 5] += 2.0  # a concept whose best rows all come late
    acc = TopKAccumulator(40, 7)
    for a in range(0, 900, 64):
        acc.update(scores[a : a + 64], np.arange(a, min(a + 64, 900)))
    want_rows = np.argsort(-scores, axis=0, kind="stable")[:7]
    assert np.array_equal(acc.values_kc.numpy(), np.take_along_axis(scores, want_rows, 0))
    assert np.array_equal(acc.rows_kc.numpy(), want_rows)

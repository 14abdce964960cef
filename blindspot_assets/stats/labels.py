"""Concept names without manual inspection: caption terms associated with each concept.

For every concept k and caption term t (a word, or two adjacent words, after dropping stop
words) over the real images, the association is the point-biserial (Pearson) correlation between
"the caption contains t" and ξ_k — high only when t's images carry the concept *and* the
concept lives mostly on t's images, so neither a rare term nor a ubiquitous one wins by default.
``lift`` = mean ξ_k over images with t ÷ mean ξ_k overall is reported beside it.

Streaming: concepts are taken in column blocks (the code store's chunk width) and images in row
blocks; the term × concept sums are a sparse (terms × images) by dense (images × concepts)
product, so memory is terms × column block, never images × concepts.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from blindspot_assets.stats.reading import iter_blocks, n_concepts_of, open_store, read_rows
from blindspot_assets.store.rowstore import RowStore

# fmt: off
STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "of", "on", "in", "at", "to", "for", "with", "by", "from",
    "into", "onto", "over", "under", "up", "down", "off", "out", "is", "are", "was", "were", "be",
    "been", "being", "this", "that", "these", "those", "it", "its", "as", "there", "here", "some",
    "any", "very", "image", "photo", "picture", "stock",
})
# fmt: on
_WORD = re.compile(r"[a-z][a-z0-9'-]*")


def caption_terms(caption: str) -> set[str]:
    """Words and adjacent word pairs of a caption, lower-cased, stop words dropped."""
    words = _WORD.findall(caption.lower())
    terms = {w for w in words if w not in STOP_WORDS and len(w) > 1}
    for a, b in zip(words, words[1:], strict=False):
        if a not in STOP_WORDS and b not in STOP_WORDS and len(a) > 1 and len(b) > 1:
            terms.add(f"{a} {b}")
    return terms


def _term_matrix(
    captions: list[str], min_count: int, max_doc_frac: float
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Vocabulary and the (image, term) incidence as CSR index arrays (indptr, indices)."""
    per_image = [caption_terms(c) for c in captions]
    counts: dict[str, int] = {}
    for terms in per_image:
        for t in terms:
            counts[t] = counts.get(t, 0) + 1
    max_count = max_doc_frac * len(captions)
    vocab = sorted(t for t, n in counts.items() if min_count <= n <= max_count)
    index = {t: i for i, t in enumerate(vocab)}
    indptr = [0]
    indices: list[int] = []
    for terms in per_image:
        indices.extend(sorted(index[t] for t in terms if t in index))
        indptr.append(len(indices))
    return vocab, np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)


LABEL_SCHEMA = {"concept": pl.Int32, "rank": pl.Int32, "term": pl.String, "score": pl.Float64,
                "lift": pl.Float64, "n_images_term": pl.Int64}  # fmt: skip


@dataclass(frozen=True)
class _Terms:
    """The caption terms of the labelled images: vocabulary, CSR incidence, counts."""

    vocab: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    n_with_t: np.ndarray  # images whose caption holds each term


def label_concepts(
    real_codes: str | Path | RowStore,
    manifest_df: pl.DataFrame,
    top_terms: int = 5,
    min_count: int = 5,
    max_doc_frac: float = 0.9,
    min_images: int = 5,
    block_rows: int = 2048,
    concept_block: int = 4096,
) -> pl.DataFrame:
    """The ``top_terms`` caption terms most associated with each concept over the real images.

    Uses valid code rows whose image id is in ``manifest_df`` (columns ``image_id``, ``caption``)
    with a non-empty caption. Terms must occur in ≥ ``min_count`` and ≤ ``max_doc_frac`` of those
    images; concepts must fire (ξ > 0) in ≥ ``min_images`` of them. Columns: ``concept``,
    ``rank`` (1 = best), ``term``, ``score`` (correlation, > 0), ``lift``, ``n_images_term``.
    """
    store = open_store(real_codes)
    rows_n, captions = _captioned_rows(store, manifest_df)
    vocab, indptr, indices = _term_matrix(captions, min_count, max_doc_frac)
    if not vocab:
        return pl.DataFrame(schema=LABEL_SCHEMA)
    terms = _Terms(vocab, indptr, indices, np.bincount(indices, minlength=len(vocab)))
    n_concepts = n_concepts_of(store)
    # keep the terms × concepts sums near 256 MB whatever the vocabulary
    width = max(64, min(concept_block, (1 << 26) // len(vocab)))
    parts = []
    for c0 in range(0, n_concepts, width):
        columns = slice(c0, min(c0 + width, n_concepts))
        sums = _term_sums(store.array("xi"), rows_n, terms, columns, block_rows)
        parts.append(_best_terms(terms, columns, *sums, top_terms, min_images))
    return pl.concat(parts).sort(["concept", "rank"])


def _captioned_rows(store: RowStore, manifest_df: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The valid code rows whose image has a non-empty caption, and those captions."""
    captions_by_id = dict(manifest_df.select("image_id", "caption").drop_nulls().iter_rows())
    ids = store.image_ids()
    rows_n = np.asarray(
        [r for r in np.flatnonzero(store.valid()) if str(captions_by_id.get(ids[r], "")).strip()],
        dtype=np.int64,
    )
    return rows_n, [str(captions_by_id[ids[r]]) for r in rows_n]


def _term_sums(
    xi: Any, rows_n: np.ndarray, terms: _Terms, columns: slice, block_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the concepts in ``columns``: Σ ξ over each term's images (terms × concepts), Σ ξ,
    Σ ξ² and the count of images where each concept fires, streamed over row blocks."""
    width = columns.stop - columns.start
    sums_tc = torch.zeros((len(terms.vocab), width), dtype=torch.float32)
    sum_c, sum_sq_c = np.zeros(width), np.zeros(width)
    fires_c = np.zeros(width, dtype=np.int64)
    indptr, indices = terms.indptr, terms.indices
    for start, stop in iter_blocks(int(rows_n.size), block_rows):
        block = read_rows(xi, rows_n[start:stop], (columns,)).astype(np.float32)
        sum_c += block.sum(0, dtype=np.float64)
        sum_sq_c += np.square(block, dtype=np.float64).sum(0)
        fires_c += np.count_nonzero(block > 0, axis=0)
        lo, hi = indptr[start], indptr[stop]
        image_of_nnz = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"
            warnings.simplefilter("ignore", UserWarning)
            incidence_ti = torch.sparse_coo_tensor(
                torch.from_numpy(np.stack([indices[lo:hi], image_of_nnz])),
                torch.ones(hi - lo),
                (len(terms.vocab), stop - start),
                check_invariants=False,
            ).to_sparse_csr()
        sums_tc += incidence_ti @ torch.from_numpy(block)
    return sums_tc.numpy().astype(np.float64), sum_c, sum_sq_c, fires_c


def _best_terms(
    terms: _Terms,
    columns: slice,
    s_tc: np.ndarray,
    sum_c: np.ndarray,
    sum_sq_c: np.ndarray,
    fires_c: np.ndarray,
    top_terms: int,
    min_images: int,
) -> pl.DataFrame:
    """The point-biserial correlation of every (term, concept) and each concept's best terms."""
    n = int(terms.indptr.size - 1)
    n_with_t = terms.n_with_t.astype(np.float64)
    p_t = n_with_t / n
    sd_t = np.sqrt(p_t * (1.0 - p_t))
    mean_c = sum_c / n
    sd_c = np.sqrt(np.maximum(sum_sq_c / n - mean_c**2, 0.0))
    cov_tc = s_tc / n - p_t[:, None] * mean_c[None, :]
    denom = sd_t[:, None] * sd_c[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r_tc = np.where(denom > 0, cov_tc / denom, 0.0)
        lift_tc = (s_tc / n_with_t[:, None]) / mean_c[None, :]
    r_tc[:, fires_c < min_images] = 0.0
    k = min(top_terms, len(terms.vocab))
    top_kc = np.argsort(-r_tc, axis=0, kind="stable")[:k]
    score_kc = np.take_along_axis(r_tc, top_kc, axis=0)
    keep = score_kc > 0
    concept_kc = np.broadcast_to(np.arange(columns.start, columns.stop)[None, :], top_kc.shape)
    rank_kc = np.broadcast_to(np.arange(1, k + 1)[:, None], top_kc.shape)
    columns_out = {
        "concept": concept_kc[keep].astype(np.int32),
        "rank": rank_kc[keep].astype(np.int32),
        "term": [terms.vocab[i] for i in top_kc[keep]],
        "score": score_kc[keep],
        "lift": np.take_along_axis(lift_tc, top_kc, axis=0)[keep],
        "n_images_term": n_with_t[top_kc[keep]].astype(np.int64),
    }
    return pl.DataFrame(columns_out, schema=LABEL_SCHEMA)


def top_label(labels_df: pl.DataFrame) -> pl.DataFrame:
    """``concept`` → ``label`` (its best term), for display beside a concept id."""
    return labels_df.filter(pl.col("rank") == 1).select("concept", label="term")

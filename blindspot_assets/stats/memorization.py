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
float32 values, ~40 kB for ViT-B at pool 4 with 3 zooms, so ~400 MB for 10,000 images; the
queries' descriptors, one per image, are held too, to be searched in one call); no N × N
matrix is formed. The nearest real image is found through a ``ConeIndex`` (exact: the
brute-force answer): a k-means tree of cones over the real descriptors with leaves of at most a
few hundred, in which a subtree whose cone bound cannot beat a query's best so far is skipped
whole; with structure at every scale a query reads a few leaves and compares a few hundred
centres however many real images there are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

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


@dataclass(frozen=True)
class _Level:
    """One level of a cone tree: its nodes' unit centres and cone half-angles (over every vector
    below the node), and where each node's children start in the next level."""

    centres: torch.Tensor  # (k, D)
    half_angle: torch.Tensor  # (k,)
    children: torch.Tensor  # (k + 1,): node j's children are children[j]:children[j + 1]

    @cached_property
    def cone_rows(self) -> torch.Tensor:
        """(k, D + 2): ĉ, cos α, sin α per node, for ``_may_beat``'s one matmul."""
        a = self.half_angle[:, None]
        return torch.cat([self.centres, torch.cos(a), torch.sin(a)], dim=1)


class ConeIndex:
    """Exact maximum-cosine search over unit vectors, pruned by a tree of cones.

    A spherical k-means tree (``_cone_tree``). One k-means with ``n / (fanout · leaf_size)``
    centres (seeded k-means++ style) cuts the vectors into cells; the levels above the cells
    are built bottom-up by grouping cells, ``fanout`` to a group; below a cell, a node of more
    than ``fanout · leaf_size`` vectors is split into ``fanout`` children and a smaller one
    straight into leaves (lists) of at most ``leaf_size``, a leaf further in two while that
    makes both cones much tighter (a leaf k-means filled with fragments of far-apart clusters
    would be opened by every query). So the number of lists grows ∝ n. Every node keeps its
    unit centre ĉ and the half-angle α of the smallest cone around ĉ holding *all the vectors
    below it*. For a unit query q at angle β to ĉ no vector below the node is closer than
    max(0, β − α), so a node that cannot beat the query's best so far is skipped with its
    whole subtree (``_may_beat``: one matmul per node and level). A query first scans the leaves
    reached by walking down from the two nearest cells, then walks the tree from the root
    opening only the nodes that may beat its best, and scans the leaves left open: the answer
    is the brute-force one (up to float rounding on exact ties). With structure at every scale
    the work per query (centres compared, lists read) does not grow with n. Groups that share
    nothing (random directions) cannot be skipped together: every query compares one centre
    per cell, and the cells' children it opens near their cone's edge grow with their number.
    Without any structure every bound stays open and the search costs about brute force, still
    exact. Memory: the vectors (sorted by leaf), their ids and the nodes: O(n · D).
    """

    def __init__(
        self,
        vectors: torch.Tensor,
        ids: I64,
        leaf_size: int = 256,
        fanout: int = 16,
        seed: int = 0,
    ) -> None:
        with _one_thread():  # many small ops: a thread pool costs more than it gives
            order, bounds, cells = _cone_tree(vectors, max(1, leaf_size), max(2, fanout), seed)
        self._entry = cells  # the level of the cells
        self.vectors = vectors[order].contiguous()
        self.ids = torch.from_numpy(np.asarray(ids, np.int64))[order]
        self.levels: list[_Level] = []
        for d, starts in enumerate(bounds):
            below = bounds[d + 1] if d + 1 < len(bounds) else torch.arange(len(order) + 1)
            centres, half_angle = _cones(self.vectors, starts)
            children = torch.searchsorted(below, starts)
            self.levels.append(_Level(centres, half_angle, children))
        leaves = self.levels[-1]
        self.centres, self.half_angle, self.offsets = leaves.centres, leaves.half_angle, bounds[-1]
        self.lists_scanned = 0  # (query, leaf) pairs scanned by search, for the benchmarks
        self.centres_compared = 0  # (query, node) bounds and steps down from the cells, by search
        self.cells_compared = 0  # (query, cell) similarities of search's first step

    def _scan(
        self,
        queries: torch.Tensor,
        q_idx: torch.Tensor,
        leaf: torch.Tensor,
        exclude: torch.Tensor | None,
        best: torch.Tensor,
        arg: torch.Tensor,
    ) -> None:
        """Update ``best``/``arg`` with every (query, leaf) pair given, leaf by leaf: each leaf
        is read once against all its queries, in chunks of at most 2^22 similarities."""
        order = torch.argsort(leaf, stable=True)
        q_idx = q_idx[order]
        lists, counts = torch.unique_consecutive(leaf[order], return_counts=True)
        offsets = self.offsets.tolist()
        stop = 0
        for j, count in zip(lists.tolist(), counts.tolist(), strict=True):
            lo, hi = offsets[j], offsets[j + 1]
            step = max(1, (1 << 22) // max(1, hi - lo))
            for a in range(stop, stop + count, step):
                rows = q_idx[a : min(a + step, stop + count)]
                sim = queries[rows] @ self.vectors[lo:hi].T
                if exclude is not None:
                    sim.masked_fill_(exclude[rows][:, None] == self.ids[lo:hi][None, :], -torch.inf)
                value, idx = sim.max(dim=1)
                better = value > best[rows]
                best[rows[better]], arg[rows[better]] = value[better], self.ids[lo + idx[better]]
            stop += count
        self.lists_scanned += int(q_idx.numel())

    def search(
        self, queries: torch.Tensor, exclude: I64 | None = None, chunk: int = 1 << 18
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(best cosine, its id) per unit query; ``exclude`` (one id per query) is skipped.

        Three passes over all the queries at once: each query reads two leaves found by
        walking down the tree (``_first_leaves``); then, ``chunk`` queries at a time, the tree
        is walked level by level with every (query, open node) pair (``_open_leaves``); then
        every leaf left open is read once, against all the queries that need it. It runs on
        one thread: the ops are small, and waking a thread pool costs more than they do.
        Search many queries per call: the fewer queries per node, the smaller the matmuls.
        """
        m = queries.shape[0]
        if m == 0:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        ex = None if exclude is None else torch.from_numpy(np.asarray(exclude, np.int64))
        best = torch.full((m,), -torch.inf)
        arg = torch.full((m,), -1, dtype=torch.int64)
        with _one_thread():
            first = self._first_leaves(queries)  # (m, 1 or 2)
            near = torch.argsort(first[:, 0], stable=True)  # neighbours read the same rows
            queries, first = queries[near], first[near]
            ex = None if ex is None else ex[near]
            q_idx = torch.arange(m)[:, None].expand_as(first)
            again = torch.zeros_like(first, dtype=torch.bool)
            again[:, 1:] = first[:, 1:] == first[:, :1]
            self._scan(queries, q_idx[~again], first[~again], ex, best, arg)
            for rows in torch.arange(m).split(max(1, chunk)):
                q_at, leaf = self._open_leaves(queries, rows, best)
                new = (leaf[:, None] != first[q_at]).all(dim=1)  # the first ones are read
                self._scan(queries, q_at[new], leaf[new], ex, best, arg)
        best[near], arg[near] = best.clone(), arg.clone()
        return best, arg

    def _first_leaves(self, q: torch.Tensor) -> torch.Tensor:
        """Two leaves per query to read first (one where the tree has a single path): from the
        two most similar cells (all compared, in blocks: the levels above mix far-apart groups
        wherever there is no structure at their scale, and a greedy or beam step through them
        goes astray), the walk down to the most similar child at each level below."""
        cells = self.levels[self._entry].centres
        k = min(2, len(cells))
        self.cells_compared += q.shape[0] * len(cells)
        starts = torch.cat(
            [(q[a:b] @ cells.T).topk(k, dim=1).indices for a, b in iter_blocks(q.shape[0], 8192)]
        )
        return torch.stack([self._descend(q, starts[:, i], self._entry) for i in range(k)], dim=1)

    def _descend(self, q: torch.Tensor, node: torch.Tensor, depth: int) -> torch.Tensor:
        """The leaf each query reaches from its ``node`` at level ``depth`` by stepping, level
        by level, to the most similar child (queries grouped by node: one matmul per node)."""
        for parent, level in zip(self.levels[depth:-1], self.levels[depth + 1 :], strict=True):
            lo, width = parent.children[:-1], parent.children.diff()
            step = lo[node]  # nodes with one child: that child
            order = torch.argsort(node, stable=True)
            nodes, counts = torch.unique_consecutive(node[order], return_counts=True)
            for j, rows in zip(nodes.tolist(), order.split(counts.tolist()), strict=True):
                if int(width[j]) > 1:
                    first = int(lo[j])
                    sim = q[rows] @ level.centres[first : first + int(width[j])].T
                    self.centres_compared += sim.numel()
                    step[rows] = first + sim.argmax(dim=1)
            node = step
        return node

    def _open_leaves(
        self, queries: torch.Tensor, rows: torch.Tensor, best: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query row, leaf) pairs whose cone may hold a vector beating the query's best, for
        the queries ``rows``. Down to the cells, queries near each other (``search`` orders
        them by their first leaf; 256 at a time) walk together: a node is tested against the
        whole block when its parent is open for any of them, which costs nothing where every
        query opens every node (no structure above the cells) and keeps the walk short where
        there is. From the cells down, every (query, open node) pair walks on its own: a
        node's children are tested against the queries that opened it only
        (``_open_children``)."""
        q_rows = _query_rows(queries[rows], best[rows])
        gamma = torch.arccos(-q_rows[:, -2])  # γ = arccos b, b = −(the row's D-th value)
        above = self.levels[: self._entry + 1]
        q_parts, node_parts = [], []
        for block in torch.arange(len(rows)).split(256):
            nodes = torch.zeros(1, dtype=torch.int64)  # the root
            open_ = torch.ones(len(block), 1, dtype=torch.bool)
            for parent, level in zip(above[:-1], above[1:], strict=True):
                nodes = _ranges(parent.children, nodes)
                cones = level.cone_rows[nodes]
                open_ = _may_beat(q_rows[block] @ cones.T, level.half_angle[nodes], gamma[block])
                self.centres_compared += open_.numel()
                some = open_.any(dim=0)
                nodes, open_ = nodes[some], open_[:, some]
            q_at, at = open_.nonzero(as_tuple=True)
            q_parts.append(block[q_at])
            node_parts.append(nodes[at])
        q_at, node = torch.cat(q_parts), torch.cat(node_parts)
        below = self.levels[self._entry :]
        for parent, level in zip(below[:-1], below[1:], strict=True):
            q_at, node = self._open_children(q_rows, gamma, q_at, node, parent, level)
        return rows[q_at], node

    def _open_children(
        self,
        q_rows: torch.Tensor,
        gamma: torch.Tensor,
        q_at: torch.Tensor,
        node: torch.Tensor,
        parent: _Level,
        level: _Level,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, child) pairs left open below the open (query, node) pairs given: one
        matmul per node with several children against its queries. A node with a single child
        (a leaf repeated down to the last level) holds the same vectors, so the same cone: its
        pairs pass through."""
        lo, width = parent.children[node], parent.children.diff()[node]
        one = width == 1
        out_q, out_node = [q_at[one]], [lo[one]]
        q_many, node_many = q_at[~one], node[~one]
        order = torch.argsort(node_many, stable=True)
        nodes, counts = torch.unique_consecutive(node_many[order], return_counts=True)
        for j, group in zip(nodes.tolist(), order.split(counts.tolist()), strict=True):
            a, b = int(parent.children[j]), int(parent.children[j + 1])
            q_j = q_many[group]
            cones = level.cone_rows[a:b]
            open_ = _may_beat(q_rows[q_j] @ cones.T, level.half_angle[a:b], gamma[q_j])
            at, c = open_.nonzero(as_tuple=True)
            out_q.append(q_j[at])
            out_node.append(a + c)
            self.centres_compared += open_.numel()
        return torch.cat(out_q), torch.cat(out_node)


def _query_rows(q: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """(m, D + 2): q, −b, √(1 − b²) per query, with b its best so far less 1e-5 (slack for
    float rounding): row · cone row = cos β − cos(α + γ), γ = arccos b."""
    b = (best - 1e-5).clamp(-1.0, 1.0)[:, None]
    return torch.cat([q, -b, (1.0 - b * b).clamp(min=0.0).sqrt()], dim=1)


def _may_beat(score: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """(queries × nodes) whether a node's cone may hold a vector beating a query's best, from
    ``score`` = ``_query_rows`` · ``cone_rows``, the nodes' α and the queries' γ = arccos b.

    No vector within α of ĉ is closer to q than max(0, β − α), so a node may hold one with
    cosine above b = cos γ only if β < α + γ: where α + γ < π that is cos β > cos(α + γ), i.e.
    score > 0 (no arccos, no per-pair cos or sin); where α + γ ≥ π the node is always open."""
    open_ = score > 0.0
    wide = alpha + gamma.max() >= math.pi
    if bool(wide.any()):
        open_[:, wide] |= alpha[wide][None, :] + gamma[:, None] >= math.pi
    return open_


def _ranges(offsets: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """offsets[j]:offsets[j + 1] for every j in ``nodes`` (sorted), concatenated."""
    lo, hi = offsets[nodes], offsets[nodes + 1]
    sizes = hi - lo
    starts = torch.repeat_interleave(lo - (torch.cumsum(sizes, 0) - sizes), sizes)
    return starts + torch.arange(int(sizes.sum()))


def _cone_tree(
    vectors: torch.Tensor, leaf_size: int, fanout: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """An order of the vectors; per level of the tree (root first), where its nodes start in
    that order (plus the end); the level of the cells.

    The vectors are first cut into cells of about ``fanout · leaf_size`` by one spherical
    k-means with that many centres (``_cells``), and the levels above the cells are built
    bottom-up by grouping cells (``_group_levels``). A top-down split with a small fanout has
    to put far-apart groups together wherever there are more of them than children (random
    "themes"), and then cuts each of them into fragments spread over its children: every
    level below is mixed, and every query opens it. Below the cells the tree is built top down:
    a node of more than ``fanout · leaf_size`` vectors is split into ``fanout`` children, each
    then into tight pieces (``_tight_pieces``); a smaller node into its leaves at once
    (``_leaf_pieces``), which stay leaves down to the last level."""
    order = torch.arange(vectors.shape[0])
    bounds = _cells(vectors, order, leaf_size, fanout, seed)
    cells = len(bounds) - 1
    leaves: set[int] = set()  # starts of the nodes that are leaves
    while True:
        starts = bounds[-1].tolist()
        cuts = set(starts)
        for j, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
            if a in leaves:
                continue
            node_seed = seed + len(bounds) * 1_000_003 + j
            if b - a > fanout * leaf_size:
                counts = _split(vectors, order[a:b], fanout, node_seed)
                counts = _pieces_of(vectors, order[a:b], counts, _tight_pieces)
            else:
                counts = _leaf_pieces(vectors, order[a:b], leaf_size, node_seed)
                leaves.update((a + torch.cumsum(counts, 0) - counts).tolist())
            cuts.update((a + torch.cumsum(counts, 0)[:-1]).tolist())
        if len(cuts) == len(starts):
            return order, bounds, cells
        bounds.append(torch.tensor(sorted(cuts)))


def _cells(
    vectors: torch.Tensor, order: torch.Tensor, leaf_size: int, fanout: int, seed: int
) -> list[torch.Tensor]:
    """Cut ``order`` in place into cells of about ``fanout · leaf_size`` (one k-means, then
    tight pieces) grouped bottom-up (``_group_levels``); the node starts per level, root first,
    the cells last. Few vectors: the root alone."""
    n = vectors.shape[0]
    if n <= fanout * leaf_size:
        return [torch.tensor([0, n])]
    counts = _split(vectors, order, -(-n // (fanout * leaf_size)), seed)
    counts = _pieces_of(vectors, order, counts, _tight_pieces)
    return _group_levels(vectors, order, counts, fanout, seed)


def _group_levels(
    vectors: torch.Tensor, order: torch.Tensor, counts: torch.Tensor, fanout: int, seed: int
) -> list[torch.Tensor]:
    """Levels above runs of ``counts`` vectors of ``order`` (the cells), built bottom-up: the
    nodes of a level are grouped by a spherical k-means of their vector sums into about one
    group per ``fanout`` nodes, until at most ``fanout`` are left under the root. The cells are
    reordered in place so that every group is a run; the node starts per level, root first.
    Grouping cells (few, and each already one piece of content) finds the groups that exist at
    every scale and cannot mix fragments of far-apart ones."""
    ends = torch.cumsum(counts, 0)
    cell_of = torch.empty_like(order)
    cell_of[order] = torch.repeat_interleave(torch.arange(len(counts)), counts)
    sums = torch.zeros(len(counts), vectors.shape[1]).index_add_(0, cell_of, vectors)  # no copy
    chain = [torch.arange(len(counts))]  # per level (cells first): each cell's node there
    while sums.shape[0] > fanout:
        group = _group(sums, -(-sums.shape[0] // fanout), seed + len(chain))
        chain.append(group[chain[-1]])
        sums = torch.zeros(int(group.max()) + 1, sums.shape[1]).index_add_(0, group, sums)
    cell_order = torch.from_numpy(np.lexsort([c.numpy() for c in chain]))  # top level primary
    runs = [
        order[int(e - c) : int(e)]
        for c, e in zip(counts[cell_order], ends[cell_order], strict=True)
    ]
    order[:] = torch.cat(runs)
    new_ends = torch.cumsum(counts[cell_order], 0)
    bounds = [torch.tensor([0, int(new_ends[-1])])]
    for node in reversed(chain):  # top level first, the cells last
        node = node[cell_order]
        last = torch.nonzero(node[1:] != node[:-1]).flatten()  # last cell of each node but one
        bounds.append(torch.cat([torch.zeros(1, dtype=torch.int64), new_ends[last], new_ends[-1:]]))
    return bounds


def _group(sums: torch.Tensor, k: int, seed: int, iters: int = 10) -> torch.Tensor:
    """Spherical k-means of nodes, each weighted by its vectors (the rows of ``sums`` are their
    sums): the group (0..) of each node, groups numbered without gaps."""
    x = torch.nn.functional.normalize(sums, dim=1)
    centres = _lloyd(x, sums, _spread_seeds(x, k, torch.Generator().manual_seed(seed)), iters)
    group = _argmax_sim(x, centres)
    return torch.searchsorted(torch.unique(group), group)  # numbered without gaps


def _leaf_pieces(
    vectors: torch.Tensor, members: torch.Tensor, leaf_size: int, seed: int
) -> torch.Tensor:
    """Split a node into leaves of at most ``leaf_size`` (k-means, again on any piece still too
    big), each then into tight pieces (``_tight_pieces``); reorder ``members`` (a view into the
    tree's order) by leaf and return the leaf sizes."""
    if len(members) <= leaf_size:
        return _tight_pieces(vectors, members)
    counts = _split(vectors, members, -(-len(members) // leaf_size), seed)
    return _pieces_of(
        vectors, members, counts, lambda v, m: _leaf_pieces(v, m, leaf_size, seed + len(m))
    )


def _pieces_of(
    vectors: torch.Tensor,
    members: torch.Tensor,
    counts: torch.Tensor,
    pieces: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``pieces`` applied to each run of ``counts`` members (empty runs dropped); the sizes of
    all the pieces, in order."""
    ends = torch.cumsum(counts, 0).tolist()
    return torch.cat(
        [
            pieces(vectors, members[end - c : end])
            for c, end in zip(counts.tolist(), ends, strict=True)
            if c > 0
        ]
    )


def _split(vectors: torch.Tensor, members: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Reorder ``members`` (a view into the tree's order) by their k-means cluster; the cluster
    sizes. Where k-means puts everything in one cluster (identical vectors), the members are cut
    into k equal runs instead: any split keeps the search exact, and the tree must get deeper."""
    x = vectors[members]
    centres = _spherical_kmeans(x, k, seed)
    assign = torch.cat([_argmax_sim(x[a:b], centres) for a, b in iter_blocks(len(x), 65536)])
    counts = torch.bincount(assign, minlength=k)
    if int(counts.max()) == len(x):
        assign = torch.arange(len(x)) * k // len(x)
        counts = torch.bincount(assign, minlength=k)
    members[:] = members[torch.argsort(assign, stable=True)]
    return counts


def _split_if_tighter(vectors: torch.Tensor, members: torch.Tensor) -> torch.Tensor | None:
    """Split a node in two (2-means seeded with its mean and its farthest member) when both
    halves' cones are under 0.8 of its own, or one half of two or more members is under half
    of it (a fragment peeled off a mixture of several); reorder ``members`` and return the two
    sizes, or None. A node that k-means filled with fragments of far-apart clusters has a wide
    cone, which every query would open; its fragments alone are tight and get skipped."""
    x = vectors[members]
    mean = torch.nn.functional.normalize(x.sum(0), dim=0)
    centres = _lloyd(x, x, torch.stack([mean, x[(x @ mean).argmin()]]), 4)
    assign = _argmax_sim(x, centres)
    counts = torch.bincount(assign, minlength=2)
    if int(counts.min()) == 0:
        return None
    whole, halves = _half_angle(x), [_half_angle(x[assign == 0]), _half_angle(x[assign == 1])]
    tight = int(torch.tensor(halves).argmin())
    peel = int(counts[tight]) >= 2 and halves[tight] < 0.5 * whole  # a fragment of a mixture
    if max(halves) >= 0.8 * whole and not peel:
        return None
    members[:] = members[torch.argsort(assign, stable=True)]
    return counts


def _tight_pieces(vectors: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Split a small node in two while ``_split_if_tighter`` finds it worth it, then each half
    the same way (in one level of the tree: a shallow tree costs less to walk); reorder
    ``members`` by piece and return the piece sizes."""
    halves = _split_if_tighter(vectors, members) if len(members) >= 8 else None
    if halves is None:
        return torch.tensor([len(members)])
    cut = int(halves[0])
    return torch.cat([_tight_pieces(vectors, members[:cut]), _tight_pieces(vectors, members[cut:])])


def _half_angle(x: torch.Tensor) -> float:
    """Half-angle of the cone around the normalised mean of the unit rows ``x``."""
    mean = torch.nn.functional.normalize(x.sum(0), dim=0)
    return math.acos(min(1.0, max(-1.0, float((x @ mean).min()))))


def _cones(vectors: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit centre and half-angle of the cone holding vectors[starts[j]:starts[j + 1]], per j."""
    k = len(starts) - 1
    node = torch.repeat_interleave(torch.arange(k), starts.diff())
    if len(node) == 0:
        return torch.zeros(k, vectors.shape[1]), torch.zeros(k)
    sums = torch.zeros(k, vectors.shape[1]).index_add_(0, node, vectors)  # reduceat: 25× slower
    centres = torch.nn.functional.normalize(sums, dim=1)
    cos_min = torch.ones(k)
    for a, b in iter_blocks(len(node), 65536):
        cos = (vectors[a:b] * centres[node[a:b]]).sum(dim=1)
        cos_min.scatter_reduce_(0, node[a:b], cos, reduce="amin")
    return centres, torch.arccos(cos_min.clamp(-1.0, 1.0))


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


def _spread_seeds(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on unit rows: each next seed drawn with probability ∝ its cosine
    distance to the nearest seed so far, so far-apart groups all get a seed (random seeds
    leave some groups without one, and k-means then mixes them in one cluster)."""
    seeds = [int(torch.randint(x.shape[0], (1,), generator=g))]
    dist = (1.0 - x @ x[seeds[0]]).clamp(min=0.0)
    for _ in range(k - 1):
        total = float(dist.sum())
        weights = dist / total if total > 0 else torch.full_like(dist, 1.0 / len(dist))
        seeds.append(int(torch.multinomial(weights, 1, generator=g)))
        dist = torch.minimum(dist, (1.0 - x @ x[seeds[-1]]).clamp(min=0.0))
    return x[seeds].clone()


def _spherical_kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 8) -> torch.Tensor:
    """Unit centres of a spherical k-means on a seeded sample of at most 64·k rows."""
    g = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(x.shape[0], generator=g)[: min(x.shape[0], 64 * k)]]
    return _lloyd(sample, sample, _spread_seeds(sample, k, g), iters)


def _lloyd(x: torch.Tensor, sums: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    """Spherical k-means steps from ``centres``: each unit row of ``x`` goes to its most
    similar centre, and a centre moves to the normalised total of its members' ``sums`` rows
    (``x`` itself, or nodes' vector sums, so that a node weighs as many vectors as it holds);
    a centre left without members stays where it is."""
    for _ in range(iters):
        assign = _argmax_sim(x, centres)
        one_hot = torch.nn.functional.one_hot(assign, len(centres)).to(sums.dtype)
        pooled = one_hot.T @ sums  # a matmul: index_add_ is slow on CPU for small blocks
        used = torch.bincount(assign, minlength=len(centres)) > 0
        centres = torch.where(used[:, None], torch.nn.functional.normalize(pooled, dim=1), centres)
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
    own_ids = [split_sample_id(i)[0] for i in gen_ids]  # the caption's real image
    return _concept_distance(gc, rc, gen_ids, near_ids), _concept_distance(gc, rc, gen_ids, own_ids)


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
    null = _nearest(_describe(real_ch, calib, block_rows), index, calib)[0]
    tau = float(np.quantile(null, level))
    # F̂(τ) is the level when the sample resolves the quantile; never report less
    expected_false = gen_rows.size * max(float(np.mean(null < tau)), level)
    dist, near = _nearest(_describe(gen_ch, gen_rows, block_rows), index, None)
    return _ChannelResult(tau, dist, near, expected_false)


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
    generated set), ``is_candidate``, and the columns of ``with_seed_counts`` (one row per
    generated sample; "reproduced on s of k seeds"); sorted by ``distance``. Only the
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
    df = with_seed_counts(
        pl.DataFrame(columns).with_columns(is_candidate=pl.col("distance") < pl.col("threshold")),
        set(real_ids_all),
    )
    if not all_rows:
        df = df.filter("is_candidate")
    return df.sort("distance")

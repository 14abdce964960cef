"""Streaming mini-batch k-means (Sculley 2010): the archetype candidates C of the RA-SAE."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def assign(x_nd: Tensor, centroids_md: Tensor, block: int = 4096) -> Tensor:
    """Index of the nearest centroid of each row, computed block by block."""
    c2_m = (centroids_md * centroids_md).sum(dim=1)
    out = torch.empty(x_nd.shape[0], dtype=torch.long, device=x_nd.device)
    for a in range(0, x_nd.shape[0], block):
        xb = x_nd[a : a + block]
        out[a : a + block] = (c2_m - 2.0 * xb @ centroids_md.T).argmin(dim=1)
    return out


@torch.no_grad()
def minibatch_kmeans(
    batches: Iterable[Tensor], n_clusters: int, n_tokens: int, device: torch.device
) -> tuple[Tensor, dict[str, float]]:
    """Centroids (n_clusters × d) from a stream of shuffled token batches.

    Centroids start on the first ``n_clusters`` streamed tokens (the stream is shuffled, so
    that is a uniform sample of the data) and then move by per-centroid learning rates
    1/count over ``n_tokens`` tokens. Memory: the centroids plus one batch.
    """
    it = iter(batches)
    seeds: list[Tensor] = []
    have = 0
    while have < n_clusters:
        b = next(it).to(device)
        seeds.append(b[: n_clusters - have])
        have += seeds[-1].shape[0]
    centroids_md = torch.cat(seeds).float()
    counts_m = torch.ones(n_clusters, device=device)
    seen = 0
    inertia = float("nan")
    while seen < n_tokens:
        x_nd = next(it).to(device).float()
        idx_n = assign(x_nd, centroids_md)
        n_m = torch.bincount(idx_n, minlength=n_clusters).float()
        sums_md = torch.zeros_like(centroids_md).index_add_(0, idx_n, x_nd)
        hit = n_m > 0
        counts_m += n_m
        eta_m = (n_m / counts_m)[hit].unsqueeze(1)
        means_md = sums_md[hit] / n_m[hit].unsqueeze(1)
        centroids_md[hit] += eta_m * (means_md - centroids_md[hit])
        inertia = float(((x_nd - centroids_md[idx_n]) ** 2).sum(dim=1).mean())
        seen += x_nd.shape[0]
    return centroids_md, {"kmeans_tokens": float(seen), "kmeans_inertia": inertia}

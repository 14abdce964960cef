"""Inference encoder with the LayerNorm folded into the matmul: one pass over the codes.

The encoder's pre-activations are ``LayerNorm(x·Eᵀ + b)`` over the c concepts. Written out,
with E_c, b_c centred over concepts (so h − μ = E_c·x + b_c) and x̃ = [x, 1]:

    var_n = ‖[E_c, b_c]·x̃_n‖² / c = ‖R·x̃_n‖² / c     (R = Lᵀ, L·Lᵀ the (d+1)² Gram)
    pre_n = r_n · (γ ⊙ [E_c, b_c]) · x̃_n + β,           r_n = 1 / √(var_n + eps)

so the row scale r_n costs O(d²) per token instead of a pass over c values, and one ``addmm``
of the rows r_n·x̃_n with the folded weights writes the LayerNorm output directly. After the
matmul the only pass over the dense (tokens × c) block is the threshold compare: the
LayerNorm's read-and-write passes are gone, and the chunk's output and mask buffers are
reused from call to call (no page faults on fresh 100 MB tensors).

The folded weights are exact algebra; the results equal ``model.pre_activations`` to float
rounding (the Gram is formed in float64; see ``tests/sae/test_fast_encode.py``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from blindspot_assets.sae.scratch import Scratch, scratch_buffer

ROWS_PER_CHUNK = 2048  # tokens per matmul at most (a codes pass holds ~1,000)
COLS_PER_BLOCK = 4096  # concepts per matmul: best on 1 and 2 threads (measured 1,024 to 32,000)
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[float, ...], FoldedEncoder]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class FoldedEncoder:
    """The folded weights of one model state (``folded_encoder`` rebuilds them on change)."""

    weights: tuple[Tensor, ...]  # (d+1, ≤ cols_per_block) blocks of (γ ⊙ [E_c, b_c])ᵀ
    betas: tuple[Tensor, ...]  # the LayerNorm bias, in the same blocks (zeros without it)
    chol: Tensor | None  # (d+1, d+1): lower L with L·Lᵀ = [E_c, b_c]ᵀ[E_c, b_c] / c
    eps: float
    # a block's pre-activations and mask, reused: fresh tensors are mapped anew on every
    # allocation, and their page faults cost about as much as a pass over them
    scratch: Scratch = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    @torch.no_grad()
    def from_layers(
        cls, encoder: nn.Linear, norm: nn.Module, eps: float, cols_per_block: int = COLS_PER_BLOCK
    ) -> FoldedEncoder:
        e_cd = torch.cat([encoder.weight, encoder.bias[:, None]], dim=1).double()
        c = e_cd.shape[0]
        chol = None
        beta = torch.zeros(c, device=e_cd.device)
        if isinstance(norm, nn.LayerNorm):
            e_cd = e_cd - e_cd.mean(dim=0, keepdim=True)
            gram = e_cd.t() @ e_cd / c
            # a tiny ridge keeps the factor defined when the weights span fewer than d+1 dims
            ridge = 1e-12 * float(gram.diagonal().mean())
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            chol = torch.linalg.cholesky(gram + ridge * eye).float()  # ‖Lᵀx̃‖² = x̃ᵀ·gram·x̃
            e_cd = norm.weight.double()[:, None] * e_cd
            beta = norm.bias.detach().float()
        w_t = e_cd.t().float()
        blocks = range(0, c, cols_per_block)
        return cls(
            tuple(w_t[:, a : a + cols_per_block].contiguous() for a in blocks),
            tuple(beta[a : a + cols_per_block].clone() for a in blocks),
            chol,
            eps,
        )

    def _scratch(self, name: str, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
        return scratch_buffer(self.scratch, name, shape, dtype, self.weights[0].device)

    def _scaled_rows(self, x_nd: Tensor) -> Tensor:
        """Rows r_n·[x_n, 1] (or [x_n, 1] without LayerNorm)."""
        x1 = torch.cat([x_nd.float(), torch.ones(x_nd.shape[0], 1, device=x_nd.device)], dim=1)
        if self.chol is not None:
            var = (x1 @ self.chol).square_().sum(dim=1, keepdim=True)
            x1.mul_(torch.rsqrt(var.clamp_(min=0.0).add_(self.eps)))
        return x1

    def pre_activations(self, x_nd: Tensor) -> Tensor:
        """``LayerNorm(x·Eᵀ + b)`` (n × c), dense."""
        x1 = self._scaled_rows(x_nd)
        return torch.cat(
            [torch.addmm(b, x1, w) for w, b in zip(self.weights, self.betas, strict=True)], 1
        )

    def top_k(
        self, x_nd: Tensor, k: int, rows_per_chunk: int = ROWS_PER_CHUNK
    ) -> tuple[Tensor, Tensor]:
        """The k largest pre-activations of each token, descending: (values, concepts), each
        n × k; per block of concepts first, then over the blocks' winners (no n × c array)."""
        values, concepts = [], []
        for a in range(0, x_nd.shape[0], rows_per_chunk):
            x1 = self._scaled_rows(x_nd[a : a + rows_per_chunk])
            cand_v, cand_i, col0 = [], [], 0
            for w, b in zip(self.weights, self.betas, strict=True):
                pre = torch.addmm(
                    b, x1, w, out=self._scratch("pre", (x1.shape[0], w.shape[1]), x1.dtype)
                )
                v, i = pre.topk(min(k, w.shape[1]), dim=1)
                cand_v.append(v)
                cand_i.append(i + col0)
                col0 += w.shape[1]
            v, pick = torch.cat(cand_v, dim=1).topk(k, dim=1)
            values.append(v)
            concepts.append(torch.cat(cand_i, dim=1).gather(1, pick))
        return torch.cat(values), torch.cat(concepts)

    def entries_above(
        self, x_nd: Tensor, theta: float, rows_per_chunk: int = ROWS_PER_CHUNK
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Row-sorted (rows, cols, vals) of the pre-activations ≥ θ (> 0 when θ ≤ 0).

        A chunk of tokens at a time, and within it a block of concepts at a time, so the
        compare and ``nonzero`` read a block the matmul has just left in cache."""
        n, c = x_nd.shape[0], sum(w.shape[1] for w in self.weights)
        step = -(-n // -(-n // rows_per_chunk)) if n else 1  # equal chunks, none tiny
        found: list[Tensor] = []
        for a in range(0, n, step):
            x1 = self._scaled_rows(x_nd[a : a + step])
            m, col0 = x1.shape[0], 0
            for w, b in zip(self.weights, self.betas, strict=True):
                pre = torch.addmm(b, x1, w, out=self._scratch("pre", (m, w.shape[1]), x1.dtype))
                mask = self._scratch("mask", (m, w.shape[1]), torch.bool)
                torch.ge(pre, theta, out=mask) if theta > 0 else torch.gt(pre, 0.0, out=mask)
                rows, cols = mask.nonzero(as_tuple=True)
                found += [(rows + a) * c + (cols + col0), pre[rows, cols]]
                col0 += w.shape[1]
        if not found:
            empty = torch.zeros(0, dtype=torch.int64, device=x_nd.device)
            return empty, empty.clone(), torch.zeros(0, device=x_nd.device)
        keys, order = torch.sort(torch.cat(found[0::2]))
        vals = torch.cat(found[1::2])[order]
        return torch.div(keys, c, rounding_mode="floor"), keys % c, vals


def folded_encoder(encoder: nn.Linear, norm: nn.Module, eps: float) -> FoldedEncoder:
    """The folded weights of ``encoder`` and ``norm``, rebuilt only when a weight changed
    (in place or replaced: the key holds the tensors' ids and version counters)."""
    tensors = [encoder.weight, encoder.bias, *norm.parameters()]
    key = tuple(v for t in tensors for v in (id(t), t._version)) + (eps,)
    hit = _CACHE.get(encoder)
    if hit is not None and hit[0] == key:
        return hit[1]
    folded = FoldedEncoder.from_layers(encoder, norm, eps)
    _CACHE[encoder] = (key, folded)
    return folded

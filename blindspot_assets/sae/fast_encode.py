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

ROWS_PER_CHUNK = 1024  # tokens per matmul at most (a 1,024 × 32,000 block is 128 MB)
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[float, ...], FoldedEncoder]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class FoldedEncoder:
    """The folded weights of one model state (rebuild when the weights change)."""

    weight_t: Tensor  # (d+1, c): (γ ⊙ [E_c, b_c])ᵀ, or [E, b]ᵀ without LayerNorm
    beta: Tensor  # (c,): the LayerNorm bias (zeros without LayerNorm)
    chol: Tensor | None  # (d+1, d+1): lower L with L·Lᵀ = [E_c, b_c]ᵀ[E_c, b_c] / c
    eps: float
    # the chunk's pre-activations and mask, reused: a fresh 32 MB tensor is mapped anew on
    # every allocation, and its page faults cost about as much as a pass over it
    scratch: dict[str, Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    @torch.no_grad()
    def from_layers(cls, encoder: nn.Linear, norm: nn.Module, eps: float) -> FoldedEncoder:
        e_cd = torch.cat([encoder.weight, encoder.bias[:, None]], dim=1).double()
        c = e_cd.shape[0]
        if not isinstance(norm, nn.LayerNorm):
            zeros = torch.zeros(c, device=e_cd.device)
            return cls(e_cd.t().float().contiguous(), zeros, None, eps)
        e_cd = e_cd - e_cd.mean(dim=0, keepdim=True)
        gram = e_cd.t() @ e_cd / c
        # a tiny ridge keeps the factor defined when the weights span fewer than d+1 dims
        ridge = 1e-12 * float(gram.diagonal().mean()) * torch.eye(gram.shape[0], dtype=gram.dtype)
        chol = torch.linalg.cholesky(gram + ridge)  # lower L: gram = L·Lᵀ, ‖Lᵀx̃‖² = x̃ᵀ gram x̃
        gamma = norm.weight.double()[:, None]
        return cls(
            (gamma * e_cd).t().float().contiguous(),
            norm.bias.detach().float().clone(),
            chol.float().contiguous(),
            eps,
        )

    def pre_activations(self, x_nd: Tensor, out: Tensor | None = None) -> Tensor:
        """``LayerNorm(x·Eᵀ + b)`` (n × c) in one matmul on scaled rows (into ``out``)."""
        x1 = torch.cat([x_nd.float(), torch.ones(x_nd.shape[0], 1, device=x_nd.device)], dim=1)
        if self.chol is not None:
            var = (x1 @ self.chol).square_().sum(dim=1, keepdim=True)
            x1.mul_(torch.rsqrt(var.clamp_(min=0.0).add_(self.eps)))
        if out is None:
            return torch.addmm(self.beta, x1, self.weight_t)
        return torch.addmm(self.beta, x1, self.weight_t, out=out)

    def _buffer(self, name: str, rows: int, dtype: torch.dtype) -> Tensor:
        c = self.weight_t.shape[1]
        buf = self.scratch.get(name)
        if buf is None or buf.shape[0] < rows or buf.dtype != dtype:
            buf = torch.empty((rows, c), dtype=dtype, device=self.weight_t.device)
            self.scratch[name] = buf
        return buf[:rows]

    def entries_above(
        self, x_nd: Tensor, theta: float, rows_per_chunk: int = ROWS_PER_CHUNK
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Row-sorted (rows, cols, vals) of the pre-activations ≥ θ (> 0 when θ ≤ 0)."""
        found_r, found_c, found_v = [], [], []
        n = x_nd.shape[0]
        step = -(-n // -(-n // rows_per_chunk)) if n else 1  # equal chunks, none tiny
        for a in range(0, n, step):
            chunk = x_nd[a : a + step]
            pre = self.pre_activations(chunk, self._buffer("pre", chunk.shape[0], torch.float32))
            mask = self._buffer("mask", chunk.shape[0], torch.bool)
            torch.ge(pre, theta, out=mask) if theta > 0 else torch.gt(pre, 0.0, out=mask)
            rows, cols = mask.nonzero(as_tuple=True)
            found_r.append(rows + a)
            found_c.append(cols)
            found_v.append(pre[rows, cols])
        return torch.cat(found_r), torch.cat(found_c), torch.cat(found_v)


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

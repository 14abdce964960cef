"""The Relaxed Archetypal SAE: encoder, sparsity, archetypal dictionary (docs/method.md §4).

    pre_nc  = LayerNorm(x_nd · E + b)          (LayerNorm optional)
    code_nc = ReLU(pre_nc), then TopK per token or BatchTopK over the batch
    D_cd    = exp(m) · (rowstochastic(relu(W_cm)) · C_md + Λ_cd),  ‖Λ_i‖ ≤ δ
    x̂_nd    = z_nc · D_cd

At inference BatchTopK keeps ``z = code · 1[code ≥ θ]`` with the running threshold θ tracked
during training, and the dictionary is fused once and cached.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from blindspot_assets.sae.config import RASAEConfig
from blindspot_assets.sae.fast_encode import folded_encoder
from blindspot_assets.sae.scratch import Scratch, recycled, scratch_buffer

_EPS = 1e-8
# floats of an n × c buffer per LayerNorm-and-select block (16 MB): what matters is that no
# n × c LayerNorm output is mapped anew each step (page faults); fewer blocks, fewer small ops
_BLOCK_FLOATS = 1 << 22


class Selector(Protocol):
    """Picks the entries a training step keeps from pre-activations (no autograd), as groups
    of (rows, cols) (e.g. TopK's, then AuxK's); ``row_local``: a row's choice depends on that
    row alone, so it may be given blocks of rows (rows relative to the block)."""

    row_local: bool

    def __call__(self, pre_nc: Tensor) -> list[tuple[Tensor, Tensor]]: ...


class _SparseEncoder(torch.autograd.Function):
    """LayerNorm(x·Eᵀ + b) at selected entries only, with gradients that never go dense.

    Forward computes the dense pre-activations once (the one unavoidable n·c·d matmul), lets
    ``select`` pick the entries the loss sees (TopK, BatchTopK, AuxK) and returns their values.
    Backward uses that the loss gradient reaches k entries per token: the LayerNorm backward
    dh_n = r_n·(γ⊙g_n − a_n·1 − b_n·ĥ_n) is a sparse part plus rank terms, with
    ĥ_n = r_n·(E_c·x_n + b_c) (E_c, b_c centred over concepts), so
    dE = Zᵀ·X − 1·(Σ u_n x_n)ᵀ − E_c·(Σ w_n x_n x_nᵀ) − b_c·(Σ w_n x_n)ᵀ:
    O(nnz·d + n·d² + c·d²) instead of the n·c·d weight-gradient matmul, with no n × c
    gradient, LayerNorm backward or TopK scatter.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        gamma: Tensor | None,
        beta: Tensor | None,
        select: Selector,
        eps: float,
        scratch: Scratch | None,
        order: ConceptOrder | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        n, c = x.shape[0], weight.shape[0]
        with torch.autocast(dev, enabled=False):
            if dt == x.dtype == weight.dtype == torch.float32:  # + b comes block by block
                h = torch.mm(
                    x, weight.t(), out=scratch_buffer(scratch, "h", (n, c), x.dtype, x.device)
                )
                with_bias = False
            else:
                h = torch.addmm(bias.to(dt), x.to(dt), weight.t().to(dt)).float()
                with_bias = True
            vals, rows, cols, hhat, rstd = _select_entries(
                h, None if with_bias else bias, gamma, beta, eps, select
            )
        ctx.mark_non_differentiable(rows, cols)
        ctx.save_for_backward(x, weight, bias, gamma, rows, cols, hhat, rstd)
        ctx.order = (order or ConceptOrder()).bind(rows, cols)
        ctx.scratch = scratch
        return vals, rows, cols

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, bias, gamma, rows, cols, hhat, rstd = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            x, g = x.float(), g.float()
            if gamma is None:
                d_weight, d_bias = _sparse_weight_grad(x, bias, ctx.order, cols, g, ctx.scratch)
                return None, d_weight, d_bias, None, None, None, None, None, None
            n, c = x.shape[0], weight.shape[0]
            gg = g * gamma[cols]
            d_gamma = torch.zeros_like(gamma).index_add_(0, cols, g * hhat)
            d_beta = torch.zeros_like(gamma).index_add_(0, cols, g)
            a = x.new_zeros(n).index_add_(0, rows, gg).div_(c)
            b = x.new_zeros(n).index_add_(0, rows, gg * hhat).div_(c)
            r = rstd.view(-1)
            u, w = r * a, r * r * b
            gh = r[rows] * gg
            d_weight, d_bias = _sparse_weight_grad(x, bias, ctx.order, cols, gh, ctx.scratch)
            _subtract_layernorm_rank_terms(d_weight, d_bias, x, weight, bias, u, w, ctx.scratch)
        return None, d_weight, d_bias, d_gamma, d_beta, None, None, None, None


def _select_entries(
    h: Tensor,
    bias: Tensor | None,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    select: Selector,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """h += bias (in place, if given), LayerNorm it (if ``gamma``) and keep the entries
    ``select`` picks, group after group: (values, rows, cols, ĥ = (h − μ)·r there, r per row).
    A row-local selector sees blocks of rows, so no n × c LayerNorm output is allocated."""
    n, c = h.shape
    step = max(1, _BLOCK_FLOATS // c) if select.row_local else n
    groups: list[list[tuple[Tensor, Tensor, Tensor]]] = []
    stats: list[tuple[Tensor, Tensor]] = []
    for a in range(0, n, step):
        h_b = h[a : a + step]
        if bias is not None:
            h_b += bias
        pre_b = h_b
        if gamma is not None:
            pre_b, mean_b, rstd_b = torch.native_layer_norm(h_b, [c], gamma, beta, eps)
            stats.append((mean_b, rstd_b))
        for g, (rows, cols) in enumerate(select(pre_b)):
            if g == len(groups):
                groups.append([])
            groups[g].append((pre_b.view(-1).take(rows * c + cols), rows + a, cols))
    vals, rows, cols = (
        torch.cat([part[i] for group in groups for part in group]) for i in range(3)
    )
    if gamma is None:
        return vals, rows, cols, vals, None
    mean, rstd = (torch.cat([s[i] for s in stats]) for i in range(2))
    hhat = (h.view(-1).take(rows * c + cols) - mean.view(-1)[rows]) * rstd.view(-1)[rows]
    return vals, rows, cols, hhat, rstd


def _sparse_weight_grad(
    x: Tensor, bias: Tensor, order: ConceptOrder, cols: Tensor, gh: Tensor, scratch: Scratch | None
) -> tuple[Tensor, Tensor]:
    """(Zᵀ·X, Zᵀ·1) for the sparse n × c matrix Z with entries ``gh`` at ``order``'s; Zᵀ·X is
    written over last step's encoder gradient when the trainer left it in ``scratch``."""
    csr = order.transposed(gh, bias.shape[0], x.shape[0])
    shape = (bias.shape[0], x.shape[1])
    buf = recycled(scratch, "encoder.weight.grad", shape, x.dtype, x.device)
    d_weight = csr @ x if buf is None else torch.addmm(buf, csr, x, beta=0.0, out=buf)
    d_bias = torch.zeros_like(bias).index_add_(0, cols, gh)
    return d_weight, d_bias


def _subtract_layernorm_rank_terms(
    d_weight: Tensor,
    d_bias: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    u: Tensor,
    w: Tensor,
    scratch: Scratch | None = None,
) -> None:
    """d_weight −= 1·(Σu_n x_n)ᵀ + E_c·(Σ w_n x_n x_nᵀ) + b_c·(Σ w_n x_n)ᵀ, in place (d_bias
    likewise): one c × d² matmul and one rank-2 update; E_c and the scaled tokens are written
    into ``scratch``'s buffers."""
    e_c = torch.sub(
        weight,
        weight.mean(dim=0, keepdim=True),
        out=scratch_buffer(scratch, "E_c", tuple(weight.shape), weight.dtype, weight.device),
    )
    b_c = bias - bias.mean()
    xw = torch.mul(
        x, w[:, None], out=scratch_buffer(scratch, "xw", tuple(x.shape), x.dtype, x.device)
    )
    sw = xw.sum(dim=0)
    d_weight.addmm_(e_c, torch.mm(xw.t(), x), alpha=-1.0)
    left = torch.stack([torch.ones_like(b_c), b_c], dim=1)  # c × 2
    d_weight.addmm_(left, torch.stack([u @ x, sw]), alpha=-1.0)
    d_bias -= u.sum() + e_c @ sw + b_c * w.sum()


class ConceptOrder:
    """A step's entries (rows, cols) sorted by concept once, for every CSR product of its
    backward: the encoder's (all entries) and the decoder's (the first m: TopK's before AuxK's).
    The encoder's forward binds the entries."""

    def __init__(self) -> None:
        self.rows: Tensor | None = None
        self.cols: Tensor | None = None
        self._order: Tensor | None = None
        self._layouts: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def bind(self, rows: Tensor, cols: Tensor) -> ConceptOrder:
        self.rows, self.cols, self._order, self._layouts = rows, cols, None, {}
        return self

    def transposed(self, vals: Tensor, c: int, n: int) -> Tensor:
        """The n × c matrix with ``vals`` at the first len(vals) entries, transposed: CSR c × n."""
        assert self.rows is not None and self.cols is not None, "no entries bound"
        m = vals.numel()
        if m not in self._layouts:
            if self._order is None:
                self._order = torch.argsort(self.cols, stable=True)
            order = self._order if m == self.cols.numel() else self._order[self._order < m]
            crow = self.cols.new_zeros(c + 1)
            torch.cumsum(torch.bincount(self.cols[:m], minlength=c), 0, out=crow[1:])
            self._layouts[m] = (crow, self.rows[order], order)
        crow, rows_sorted, order = self._layouts[m]
        with warnings.catch_warnings():  # "CSR support is in beta": used for one matmul
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow, rows_sorted, vals[order], (c, n), check_invariants=False
            )


class _ArchetypeAtoms(torch.autograd.Function):
    """P = Λ + W·C (one matmul-add). W's gradient Gₚ·Cᵀ (c × m: a step's largest tensor) is
    written into ``buffers["W.grad"]`` when the trainer left last step's there: a fresh one is
    mapped (page-faulted) anew on every step. P goes into ``buffers["atoms"]`` (dead by the
    next step's forward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weights_cm: Tensor,
        relax_cd: Tensor,
        candidates_md: Tensor,
        buffers: Scratch | None,
    ) -> Tensor:
        ctx.save_for_backward(candidates_md)
        ctx.buffers = buffers
        if buffers is None:
            return torch.addmm(relax_cd, weights_cm, candidates_md)
        shape = (weights_cm.shape[0], candidates_md.shape[1])
        out = scratch_buffer(buffers, "atoms", shape, relax_cd.dtype, relax_cd.device)
        return torch.addmm(relax_cd, weights_cm, candidates_md, out=out)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor | None, ...]:
        (candidates_md,) = ctx.saved_tensors
        d_weights = None
        if ctx.needs_input_grad[0]:
            shape = (g.shape[0], candidates_md.shape[0])
            buf = recycled(ctx.buffers, "W.grad", shape, g.dtype, g.device)
            if buf is None:
                d_weights = g @ candidates_md.t()
            else:
                d_weights = torch.mm(g, candidates_md.t(), out=buf)
        return d_weights, g if ctx.needs_input_grad[1] else None, None, None


class _SparseDecode(torch.autograd.Function):
    """x̂_n = exp(m)·Σ_e v_e·P_{col_e} over row n's entries (D = exp(m)·P), without dense
    gradients: ∂v_e = exp(m)·⟨g_n, P_{col_e}⟩ (a gather-dot), ∂P = Zᵀ·G with Z the codes times
    exp(m) (one CSR matmul), ∂m = ⟨G, x̂⟩ (x̂ is linear in exp(m)). The scale multiplies the
    k codes per token, not the c × d dictionary. ∂P is written over ``buffers["relax.grad"]``
    when the trainer left last step's there (∂P is Λ's gradient)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        vals: Tensor,
        atoms_cd: Tensor,
        log_scale: Tensor | None,
        rows: Tensor,
        cols: Tensor,
        offsets: Tensor,
        order: ConceptOrder | None,
        buffers: Scratch | None,
    ) -> Tensor:
        with torch.autocast(vals.device.type, enabled=False):
            scale = None if log_scale is None else torch.exp(log_scale.float())
            weights = vals if scale is None else vals * scale
            out, offset2bag, _, _ = torch.ops.aten._embedding_bag(
                atoms_cd, cols, offsets, False, 0, False, weights, False, -1
            )
        ctx.save_for_backward(atoms_cd, scale, rows, cols, offsets, offset2bag, weights, out)
        ctx.order = order
        ctx.buffers = buffers
        return out  # type: ignore[no-any-return]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor | None, ...]:
        atoms_cd, scale, rows, cols, offsets, offset2bag, weights, out = ctx.saved_tensors
        g = g.float().contiguous()
        g_vals = g_atoms = g_log_scale = None
        if ctx.needs_input_grad[0]:
            g_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                g, atoms_cd, cols, offsets, offset2bag, 0, -1
            )
            if scale is not None:
                g_vals = g_vals * scale
        if ctx.needs_input_grad[1]:
            order = ctx.order or ConceptOrder().bind(rows, cols)
            csr = order.transposed(weights, atoms_cd.shape[0], g.shape[0])
            buf = recycled(ctx.buffers, "relax.grad", tuple(atoms_cd.shape), g.dtype, g.device)
            g_atoms = csr @ g if buf is None else torch.addmm(buf, csr, g, beta=0.0, out=buf)
        if ctx.needs_input_grad[2]:
            g_log_scale = torch.dot(g.view(-1), out.view(-1)).view(scale.shape)
        return g_vals, g_atoms, g_log_scale, None, None, None, None, None


class RelaxedArchetypalSAE(nn.Module):
    W: Tensor
    C: Tensor
    relax: Tensor
    log_scale: Tensor
    D: Tensor
    threshold: Tensor

    def __init__(self, cfg: RASAEConfig, candidates_md: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c, d = cfg.n_concepts, cfg.d
        self.encoder = nn.Linear(d, c)
        self.norm: nn.Module = (
            nn.LayerNorm(c, eps=cfg.layernorm_eps) if cfg.encoder_layernorm else nn.Identity()
        )
        if cfg.fused:
            self.register_buffer("D", torch.zeros(c, d))
        else:
            m = cfg.n_candidates
            if candidates_md is None:
                candidates_md = torch.zeros(m, d)
            if tuple(candidates_md.shape) != (m, d):
                raise ValueError(f"candidates must be ({m}, {d}), got {tuple(candidates_md.shape)}")
            self.register_buffer("C", candidates_md.detach().to(torch.float32).clone())
            # Each concept starts on one candidate (a random one), as overcomplete's eye(c, m).
            start = torch.randperm(max(m, c))[:c] % m
            w = torch.zeros(c, m)
            w[torch.arange(c), start] = 1.0
            self.W = nn.Parameter(w)
            self.relax = nn.Parameter(torch.zeros(c, d))
            self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=cfg.use_multiplier)
        # NaN until the first training batch sets it (BatchTopK only).
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._fused_cd: Tensor | None = None

    # -- dictionary ---------------------------------------------------------------------------
    @torch.no_grad()
    def project_(self) -> None:
        """Re-project W onto row-stochastic matrices and clip each row of Λ to norm ≤ δ."""
        if self.cfg.fused:
            return
        self.W.clamp_(min=0)
        self.W.div_(self.W.sum(dim=-1, keepdim=True) + _EPS)
        norms = self.relax.norm(dim=-1, keepdim=True)
        self.relax.mul_(torch.clamp(self.cfg.delta_relax / (norms + _EPS), max=1.0))
        self._fused_cd = None

    def dictionary(self) -> Tensor:
        """D (c × d): computed with gradients in training, fused and cached in eval mode."""
        if self.cfg.fused:
            return self.D
        if self.training or torch.is_grad_enabled():
            return torch.exp(self.log_scale) * (self.W @ self.C + self.relax)
        if self._fused_cd is None:
            self._fused_cd = torch.exp(self.log_scale) * (self.W @ self.C + self.relax)
        return self._fused_cd

    def dictionary_factors(
        self, grad_buffers: Scratch | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(P, m) with D = exp(m)·P, P = W·C + Λ as one matmul-add: training decodes through
        :meth:`decode_train`, which applies exp(m) to the codes instead of to D.
        ``grad_buffers``: see :class:`_ArchetypeAtoms`."""
        if self.cfg.fused:
            return self.D, None
        dev = self.W.device.type
        if torch.is_autocast_enabled(dev):  # Λ is added in float32, as in :meth:`dictionary`
            return (self.W @ self.C).float() + self.relax, self.log_scale
        atoms: Tensor = _ArchetypeAtoms.apply(self.W, self.relax, self.C, grad_buffers)
        return atoms, self.log_scale

    def decode_train(
        self,
        factors: tuple[Tensor, Tensor | None],
        vals: Tensor,
        rows: Tensor,
        cols: Tensor,
        n: int,
        order: ConceptOrder | None = None,
        grad_buffers: Scratch | None = None,
    ) -> Tensor:
        """x̂ (n × d, float32) from row-sorted entries and :meth:`dictionary_factors`: equal to
        :meth:`decode_entries` with gradients that stay sparse (see :class:`_SparseDecode`).
        ``order``: the step's entries sorted by concept, of which these are the first;
        ``grad_buffers``: see :class:`_SparseDecode`."""
        atoms_cd, log_scale = factors
        counts = torch.bincount(rows, minlength=n)
        offsets = torch.cumsum(counts, 0) - counts
        out: Tensor = _SparseDecode.apply(
            vals.float(), atoms_cd.float(), log_scale, rows, cols, offsets, order, grad_buffers
        )
        return out

    def train(self, mode: bool = True) -> RelaxedArchetypalSAE:
        self._fused_cd = None
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._fused_cd = None
        super()._load_from_state_dict(*args, **kwargs)

    # -- encoder ------------------------------------------------------------------------------
    def pre_activations(self, x_nd: Tensor) -> Tensor:
        """LayerNorm(linear(x)), before ReLU (AuxK trains dead concepts from these)."""
        out: Tensor = self.norm(self.encoder(x_nd))
        return out

    def sparse_pre_activations(
        self,
        x_nd: Tensor,
        select: Selector,
        scratch: Scratch | None = None,
        order: ConceptOrder | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-activations at the entries ``select`` keeps, as (values, rows, cols).

        Equal to ``pre_activations(x)[rows, cols]`` with the same gradients (to float rounding),
        at a fraction of the backward cost: see :class:`_SparseEncoder`. ``x`` takes no gradient.
        ``scratch`` keeps the n × c buffers between calls (a trainer's); ``order`` gets the
        entries bound (for :meth:`decode_train` to share their sort).
        """
        if x_nd.requires_grad:
            raise ValueError("sparse_pre_activations does not differentiate with respect to x")
        norm = self.norm
        gamma = norm.weight if isinstance(norm, nn.LayerNorm) else None
        beta = norm.bias if isinstance(norm, nn.LayerNorm) else None
        out: tuple[Tensor, Tensor, Tensor] = _SparseEncoder.apply(
            x_nd,
            self.encoder.weight,
            self.encoder.bias,
            gamma,
            beta,
            select,
            self.cfg.layernorm_eps,
            scratch,
            order,
        )
        return out

    def pre_codes(self, x_nd: Tensor) -> Tensor:
        """ReLU(LayerNorm(linear(x))): the dense non-negative codes before sparsity."""
        return torch.relu(self.pre_activations(x_nd))

    def sparsify(self, codes_nc: Tensor, update_threshold: bool = False) -> Tensor:
        """Keep the active codes: TopK per token, or BatchTopK (batch in training, θ else)."""
        k = self.cfg.k
        if self.cfg.sparsity == "topk":
            vals, idx = codes_nc.topk(k, dim=-1)
            return torch.zeros_like(codes_nc).scatter_(-1, idx, vals)
        if update_threshold:
            n_keep = min(k * codes_nc.shape[0], codes_nc.numel())
            theta = codes_nc.detach().flatten().float().topk(n_keep, sorted=False).values.min()
            self._track_threshold(theta)
        else:
            if torch.isnan(self.threshold):
                raise RuntimeError("BatchTopK threshold θ is not set: train the SAE first")
            theta = self.threshold
        return codes_nc * (codes_nc >= theta.to(codes_nc.dtype))

    @torch.no_grad()
    def _track_threshold(self, theta: Tensor) -> None:
        if torch.isnan(self.threshold):
            self.threshold.copy_(theta)
        else:
            mu = self.cfg.threshold_momentum
            self.threshold.mul_(mu).add_((1.0 - mu) * theta)

    @torch.no_grad()
    def batchtopk_entries(self, pre_nc: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, cols) BatchTopK keeps in training, θ updated: ReLU(pre) ≥ the batch's
        (k·n)-th largest code, as :meth:`sparsify` with ``update_threshold`` (zeros dropped)."""
        n_keep = min(self.cfg.k * pre_nc.shape[0], pre_nc.numel())
        # ReLU is monotone: the (k·n)-th largest of ReLU(pre) is ReLU of pre's
        theta = pre_nc.flatten().float().topk(n_keep, sorted=False).values.min().clamp(min=0)
        self._track_threshold(theta)
        keep = pre_nc > 0 if float(theta) <= 0 else pre_nc >= theta.to(pre_nc.dtype)
        rows, cols = keep.nonzero(as_tuple=True)
        return rows, cols

    def encode(self, x_nd: Tensor) -> Tensor:
        """Sparse codes z (n × c), dense: meant for small batches (a block of tokens).

        Without autograd it works in place on the pre-activations: one mask pass instead of
        ReLU, compare and multiply (same values).
        """
        if self.training or torch.is_grad_enabled():
            return self.sparsify(self.pre_codes(x_nd), update_threshold=False)
        pre = self.pre_activations(x_nd)
        if self.cfg.sparsity == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.relu_())
        if torch.isnan(self.threshold):
            raise RuntimeError("BatchTopK threshold θ is not set: train the SAE first")
        theta = float(self.threshold)
        if theta > 0:  # pre ≥ θ > 0 implies ReLU(pre) = pre
            return pre.masked_fill_(pre < theta, 0.0)
        return pre.relu_()

    @torch.no_grad()
    def encode_entries(self, x_nd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The non-zero codes of :meth:`encode` (inference) as row-sorted (rows, cols, vals).

        Only the dense pre-activations are built, by the folded-LayerNorm encoder
        (``sae/fast_encode.py``) a chunk of tokens at a time; everything downstream (energies,
        fire counts, per-token top codes, the reconstruction) works on the ~k entries per token.
        """
        folded = folded_encoder(self.encoder, self.norm, self.cfg.layernorm_eps)
        if self.cfg.sparsity == "topk":
            vals, idx = folded.top_k(x_nd, self.cfg.k)
            on = vals > 0
            rows = torch.arange(x_nd.shape[0], device=x_nd.device)[:, None].expand_as(idx)
            return rows[on], idx[on], vals[on]
        if torch.isnan(self.threshold):
            raise RuntimeError("BatchTopK threshold θ is not set: train the SAE first")
        return folded.entries_above(x_nd, float(self.threshold))

    def decode(self, z_nc: Tensor) -> Tensor:
        """x̂ = z·D as a dense matmul (small batches; see :meth:`decode_sparse` for training)."""
        return z_nc @ self.dictionary().to(z_nc.dtype)

    def decode_sparse(self, z_nc: Tensor) -> Tensor:
        """x̂ = z·D touching only the non-zero codes: O(nnz·d) instead of O(n·c·d).

        One ``embedding_bag`` (sum of the active atoms weighted by their codes) per token; its
        backward only reaches the active atoms, so TopK/BatchTopK training skips the dense
        decoder matmuls.
        """
        d_cd = self.dictionary()
        rows, cols = z_nc.nonzero(as_tuple=True)
        vals = z_nc[rows, cols].to(d_cd.dtype)
        counts = torch.bincount(rows, minlength=z_nc.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(cols, d_cd, offsets, mode="sum", per_sample_weights=vals)

    def decode_entries(self, vals: Tensor, rows: Tensor, cols: Tensor, n: int) -> Tensor:
        """x̂ (n × d) from codes given as entries (row-sorted ``rows``, ``cols``, ``vals``)."""
        d_cd = self.dictionary()
        counts = torch.bincount(rows, minlength=n)
        offsets = torch.cumsum(counts, 0) - counts
        return F.embedding_bag(
            cols, d_cd, offsets, mode="sum", per_sample_weights=vals.to(d_cd.dtype)
        )

    def decode_topk(self, vals_nk: Tensor, idx_nk: Tensor) -> Tensor:
        """x̂ from exactly k codes per token given as (values, concept indices)."""
        d_cd = self.dictionary()
        return F.embedding_bag(idx_nk, d_cd, mode="sum", per_sample_weights=vals_nk.to(d_cd.dtype))

    def forward(self, x_nd: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode(x_nd)
        return z, self.decode(z)

    @property
    def n_concepts(self) -> int:
        return self.cfg.n_concepts

    def init_encoder_from_dictionary(self) -> None:
        """Start the encoder as the transposed dictionary (common SAE initialisation)."""
        with torch.no_grad():
            d_cd = self.dictionary().detach()
            unit = d_cd / (d_cd.norm(dim=-1, keepdim=True) + _EPS)
            self.encoder.weight.copy_(unit)
            self.encoder.bias.zero_()
        self._fused_cd = None


def flops_per_token_encode(d: int, c: int) -> float:
    """Multiply-adds ×2 of the encoder matmul: the floor of encoding one token."""
    return 2.0 * d * c


def explained_variance(x_nd: Tensor, xhat_nd: Tensor) -> float:
    """R² = 1 − SSE / SST with per-dimension means."""
    sse = float(((x_nd - xhat_nd) ** 2).sum())
    sst = float(((x_nd - x_nd.mean(dim=0, keepdim=True)) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else math.nan

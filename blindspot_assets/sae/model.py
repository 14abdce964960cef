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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from blindspot_assets.sae.config import RASAEConfig
from blindspot_assets.sae.fast_encode import folded_encoder

_EPS = 1e-8
# pre (n × c, no autograd) → (rows, cols) of the entries a training step keeps
Selector = Callable[[Tensor], tuple[Tensor, Tensor]]


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
    ) -> tuple[Tensor, Tensor, Tensor]:
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        with torch.autocast(dev, enabled=False):
            h = torch.addmm(bias.to(dt), x.to(dt), weight.t().to(dt)).float()
            if gamma is None:
                rows, cols = select(h)
                vals = hhat = h[rows, cols]
                rstd = None
            else:
                pre, mean, rstd = torch.native_layer_norm(h, [h.shape[1]], gamma, beta, eps)
                rows, cols = select(pre)
                vals = pre[rows, cols]
                hhat = (h[rows, cols] - mean[rows, 0]) * rstd[rows, 0]
        ctx.mark_non_differentiable(rows, cols)
        ctx.save_for_backward(x, weight, bias, gamma, rows, cols, hhat, rstd)
        return vals, rows, cols

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor, *_: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, bias, gamma, rows, cols, hhat, rstd = ctx.saved_tensors
        n, c = x.shape[0], weight.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            x, g = x.float(), g.float()
            d_gamma = d_beta = None
            gh = g
            if gamma is not None:
                gg = g * gamma[cols]
                d_gamma = torch.zeros_like(gamma).index_add_(0, cols, g * hhat)
                d_beta = torch.zeros_like(gamma).index_add_(0, cols, g)
                a = torch.zeros(n, device=x.device).index_add_(0, rows, gg) / c
                b = torch.zeros(n, device=x.device).index_add_(0, rows, gg * hhat) / c
                r = rstd[:, 0]
                u, w = r * a, r * r * b
                gh = r[rows] * gg
            order = torch.argsort(cols, stable=True)
            crow = torch.zeros(c + 1, dtype=torch.int64, device=x.device)
            crow[1:] = torch.cumsum(torch.bincount(cols, minlength=c), 0)
            with warnings.catch_warnings():  # "CSR support is in beta": used for one matmul
                warnings.simplefilter("ignore", UserWarning)
                z_cn = torch.sparse_csr_tensor(
                    crow, rows[order], gh[order], (c, n), check_invariants=False
                )
            d_weight = z_cn @ x
            d_bias = torch.zeros_like(bias).index_add_(0, cols, gh)
            if gamma is not None:
                e_c = weight - weight.mean(dim=0, keepdim=True)
                b_c = bias - bias.mean()
                xw = x * w[:, None]
                sw = xw.sum(dim=0)
                d_weight -= (u @ x)[None, :] + e_c @ (xw.t() @ x) + b_c[:, None] * sw[None, :]
                d_bias -= u.sum() + e_c @ sw + b_c * w.sum()
        return None, d_weight, d_bias, d_gamma, d_beta, None, None


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
        self, x_nd: Tensor, select: Selector
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-activations at the entries ``select`` keeps, as (values, rows, cols).

        Equal to ``pre_activations(x)[rows, cols]`` with the same gradients (to float rounding),
        at a fraction of the backward cost: see :class:`_SparseEncoder`. ``x`` takes no gradient.
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
            pre = folded.pre_activations(x_nd)
            vals, idx = pre.topk(self.cfg.k, dim=-1)
            on = vals > 0
            rows = torch.arange(pre.shape[0], device=pre.device)[:, None].expand_as(idx)
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

"""Training loop of the RA-SAE over feature row stores, with exact resume."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from blindspot_assets.devices import choose_device
from blindspot_assets.sae.checkpoint import (
    build_empty,
    load_train_checkpoint,
    save_train_checkpoint,
)
from blindspot_assets.sae.config import RASAEConfig, TrainConfig
from blindspot_assets.sae.data import TokenLoader
from blindspot_assets.sae.kmeans import minibatch_kmeans
from blindspot_assets.sae.model import ConceptOrder, RelaxedArchetypalSAE, explained_variance
from blindspot_assets.sae.scratch import Scratch, scratch_buffer

LogFn = Callable[[dict[str, Any]], None]
_RUN_CONTROL = {"checkpoint_every", "log_every", "max_steps", "eval_tokens", "device"}


@dataclass
class TrainResult:
    model: RelaxedArchetypalSAE
    metrics: dict[str, Any]
    data_version: str
    sae_config: RASAEConfig
    train_config: TrainConfig
    adjustments: list[str] = field(default_factory=list)


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def resolve_device(name: str) -> torch.device:
    return torch.device(choose_device(name))


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_frac`` of the steps, then cosine to ``lr_end``."""
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1.0 + math.cos(math.pi * progress))


def auxk_loss(
    model: RelaxedArchetypalSAE,
    vals_nk: Tensor,
    idx_nk: Tensor,
    residual_nd: Tensor,
    factors: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """AuxK (Gao et al. 2024): the top ``aux_k`` dead concepts must explain the residual.

    ``vals_nk`` are the dead concepts' pre-activations *before* ReLU (the largest ``k_aux`` per
    token among the dead): a concept whose pre-activation is negative on every token (truly
    dead) still gets a gradient that moves it toward the data. Normalised by the residual's
    energy, so its weight does not depend on the data's scale. ``factors``: the step's
    :meth:`~RelaxedArchetypalSAE.dictionary_factors`, shared with its reconstruction.
    """
    target = residual_nd.detach().float()
    if factors is None:
        e_hat = model.decode_topk(vals_nk, idx_nk).float()
    else:
        n, k_aux = idx_nk.shape
        rows = _repeat_rows(n, k_aux, idx_nk.device)
        e_hat = model.decode_train(factors, vals_nk.reshape(-1), rows, idx_nk.reshape(-1), n)
    n_tokens = target.shape[0]
    err = F.mse_loss(e_hat, target, reduction="sum") / n_tokens
    return err / ((target**2).sum(dim=-1).mean() + 1e-8)


def _repeat_rows(n: int, k: int, device: torch.device) -> Tensor:
    """0, …, 0, 1, …, 1, …: each row index k times (``repeat_interleave`` without its scan)."""
    return torch.arange(n, device=device)[:, None].expand(n, k).reshape(-1)


class _MeanSquaredError(torch.autograd.Function):
    """``F.mse_loss(x_hat, target)``, the same values bit for bit, with the residual in a kept
    buffer: F.mse_loss maps three fresh n × d tensors a step (square, zeros, gradient), whose
    page faults cost about a pass each."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x_hat: Tensor, target: Tensor, buffers: Scratch | None
    ) -> Tensor:
        ctx.save_for_backward(x_hat, target)
        ctx.buffers = buffers
        buf = scratch_buffer(buffers, "residual", tuple(x_hat.shape), x_hat.dtype, x_hat.device)
        residual = torch.sub(x_hat, target, out=buf)
        return residual.mul_(residual).mean()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g: Tensor
    ) -> tuple[Tensor | None, ...]:
        x_hat, target = ctx.saved_tensors
        buf = scratch_buffer(ctx.buffers, "residual", tuple(x_hat.shape), g.dtype, g.device)
        d_x_hat = torch.sub(x_hat, target, out=buf).mul_(g * (2.0 / x_hat.numel()))
        return d_x_hat, None, None


# concepts per group of the two-stage TopK (see ``top_k_columns``): 16 was fastest on one
# thread at c = 4,096, k = 32 (8: as fast, 32 and 64: slower)
_GROUP = 16


def top_k_columns(pre_nc: Tensor, k: int) -> Tensor:
    """Per row, the columns of the k largest values, as ``pre_nc.topk(k).indices``: the same
    values in the same (descending) order; equal values may come from other columns.

    Two stages, about 1.5× faster: column j belongs to group j mod (c/16); a row's k largest
    values lie in its k groups of largest maxima (a value outside them is below k maxima, so
    below k values), and ``topk`` runs on those 16·k candidates instead of all c.
    """
    n, c = pre_nc.shape
    n_groups = c // _GROUP
    if c % _GROUP or n_groups < 4 * k or not pre_nc.is_contiguous():
        return pre_nc.topk(k, dim=-1).indices
    grouped = pre_nc.view(n, _GROUP, n_groups)  # [n, i, g] is column i·n_groups + g
    top_groups = grouped.amax(dim=1).topk(k, dim=-1, sorted=False).indices
    candidates = grouped.gather(2, top_groups[:, None, :].expand(n, _GROUP, k))
    pick = candidates.view(n, _GROUP * k).topk(k, dim=-1).indices
    return torch.div(pick, k, rounding_mode="floor") * n_groups + top_groups.gather(1, pick % k)


class _Selection:
    """What a training step keeps of the pre-activations (called without autograd): TopK per
    token or BatchTopK over the batch (updating θ), then AuxK's top ``k_aux`` dead concepts per
    token, as two groups. TopK and AuxK are row-local: the encoder may pass blocks of rows.
    ``n_main`` counts the first group's entries (the encoder puts them first, in row order)."""

    def __init__(self, model: RelaxedArchetypalSAE, dead_c: Tensor | None) -> None:
        self.model = model
        self.dead_idx = None if dead_c is None else dead_c.nonzero().flatten()
        self.k_aux = (
            0 if self.dead_idx is None else min(model.cfg.effective_aux_k, self.dead_idx.numel())
        )
        self.row_local = model.cfg.sparsity == "topk"
        self.n_main = 0

    def __call__(self, pre_nc: Tensor) -> list[tuple[Tensor, Tensor]]:
        n, cfg = pre_nc.shape[0], self.model.cfg
        if cfg.sparsity == "topk":
            cols = top_k_columns(pre_nc, cfg.k).flatten()
            rows = _repeat_rows(n, cfg.k, pre_nc.device)
        else:
            rows, cols = self.model.batchtopk_entries(pre_nc)
        self.n_main += rows.numel()
        groups = [(rows, cols)]
        if self.k_aux > 0 and self.dead_idx is not None:
            top = pre_nc[:, self.dead_idx].topk(self.k_aux, dim=-1).indices
            groups.append(
                (_repeat_rows(n, self.k_aux, pre_nc.device), self.dead_idx[top].flatten())
            )
        return groups


# the c × m and c × d gradients, written over last step's (fresh ones page-fault every step)
_RECYCLED_GRADS = ("W", "relax", "encoder.weight")


class Trainer:
    """One optimisation step at a time: loss, backward, clipping, AdamW, projection, tracking.

    Holds everything a step changes (model, optimizer, scaler, silence counters), so the loop
    in ``train_sae`` and the tests drive the same code.
    """

    def __init__(self, model: RelaxedArchetypalSAE, cfg: TrainConfig, device: torch.device):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.opt = _optimizer(model, cfg)
        self.use_amp = device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        # tokens since each concept last fired: ≥ dead_after_tokens means dead (AuxK)
        self.silent_c = torch.zeros(model.n_concepts, dtype=torch.long, device=device)
        self.last_grad_norm = 0.0
        self.scratch: dict[str, Tensor] = {}  # the encoder's n × c buffers, kept between steps

    def dead_c(self) -> Tensor:
        return self.silent_c >= self.cfg.dead_after_tokens

    def _losses(self, x_nd: Tensor, dead_c: Tensor) -> dict[str, Tensor]:
        """MSE of the sparse reconstruction (and AuxK): only the kept entries carry gradient."""
        model, cfg, n = self.model, self.cfg, x_nd.shape[0]
        any_dead = cfg.aux_weight > 0 and bool(dead_c.any())
        select = _Selection(model, dead_c if any_dead else None)
        order = ConceptOrder()  # one sort by concept for the encoder's and decoder's backward
        vals, rows, cols = model.sparse_pre_activations(x_nd, select, self.scratch, order)
        m = select.n_main
        if select.k_aux > 0:
            z, z_rows, z_cols = torch.relu(vals[:m]), rows[:m], cols[:m]
        else:
            z, z_rows, z_cols = torch.relu(vals), rows, cols
        factors = model.dictionary_factors(self.scratch)
        x_hat = model.decode_train(factors, z, z_rows, z_cols, n, order, self.scratch)
        mse: Tensor = _MeanSquaredError.apply(x_hat, x_nd.float(), self.scratch)
        aux = mse * 0
        if select.k_aux > 0:
            k_aux = select.k_aux
            aux_vals, aux_cols = vals[m:].view(n, k_aux), cols[m:].view(n, k_aux)
            aux = auxk_loss(model, aux_vals, aux_cols, x_nd - x_hat, factors)
        fired = z.detach() > 0
        return {"mse": mse, "aux": aux, "x_hat": x_hat, "on": fired, "cols": z_cols}

    def step(self, x_nd: Tensor, lr: float) -> dict[str, Tensor]:
        model, cfg = self.model, self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.use_amp
            else contextlib.nullcontext()
        )
        dead_c = self.dead_c()
        with autocast:
            out = self._losses(x_nd, dead_c)
            loss = out["mse"] + cfg.aux_weight * out["aux"]
        for name, param in model.named_parameters():  # their memory takes the new ones
            if name in _RECYCLED_GRADS and param.grad is not None:
                self.scratch[f"{name}.grad"] = param.grad
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip > 0:
            self._clip_gradients(cfg.grad_clip)
        self.scaler.step(self.opt)
        self.opt.grad_scale = None  # type: ignore[attr-defined]
        self.scaler.update()
        model.project_()
        with torch.no_grad():
            fired_c = torch.zeros_like(dead_c).index_fill_(0, out["cols"][out["on"]], True)
            self.silent_c += x_nd.shape[0]
            self.silent_c[fired_c] = 0
        return {
            "loss": loss.detach(),
            "mse": out["mse"].detach(),
            "aux": out["aux"].detach(),
            "x_hat": out["x_hat"].detach(),
            "fired": fired_c,
            "l0": out["on"].sum().float() / x_nd.shape[0],
            "dead": dead_c,
        }

    def _clip_gradients(self, max_norm: float) -> None:
        """``clip_grad_norm_``'s clipping (global L2 norm, coefficient max/(norm + 1e-6)), with
        the multiply folded into fused AdamW's ``grad_scale`` (it divides each gradient as it
        reads it) instead of a separate pass over every gradient; none when the norm is below."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.last_grad_norm = float(norm)
        denom = norm + 1e-6
        if float(denom) <= max_norm:
            return
        if self.scaler.is_enabled():  # the scaler steps on its own: clip in place
            torch._foreach_mul_(grads, max_norm / denom)
        else:
            self.opt.grad_scale = (denom / max_norm).reshape(1)  # type: ignore[attr-defined]

    # -- exact resume -------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        return {
            **_optim_tensors(self.opt),
            "silent": self.silent_c,
            "rng.cpu": torch.get_rng_state(),
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        _load_optim(self.opt, {k: v.to(self.device) for k, v in tensors.items()})
        self.silent_c = tensors["silent"].to(self.device)
        torch.set_rng_state(tensors["rng.cpu"])


def _optimizer(model: RelaxedArchetypalSAE, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one pass over each parameter per step instead of ~8 (it matters at 32k × 32k W)
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, fused=True
    )


def _optim_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"optim.{idx}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
    return out


def _load_optim(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


@torch.no_grad()
def evaluate(
    model: RelaxedArchetypalSAE, tokens_nd: Tensor, device: torch.device, batch: int = 4096
) -> dict[str, float]:
    """Inference-mode metrics (θ for BatchTopK, fused dictionary) on held tokens."""
    was_training = model.training
    model.eval()
    sse = 0.0
    l0 = 0.0
    fired_c = torch.zeros(model.n_concepts, dtype=torch.bool, device=device)
    for a in range(0, tokens_nd.shape[0], batch):
        x = tokens_nd[a : a + batch].to(device)
        z = model.encode(x)
        xh = model.decode_sparse(z)
        sse += float(((x - xh) ** 2).sum())
        l0 += float((z > 0).sum())
        fired_c |= (z > 0).any(dim=0)
    model.train(was_training)
    n, d = tokens_nd.shape
    sst = float(((tokens_nd - tokens_nd.mean(dim=0, keepdim=True)) ** 2).sum())
    return {
        "mse": sse / (n * d),
        "r2": 1.0 - sse / sst if sst > 0 else math.nan,
        "mean_l0": l0 / n,
        "dead_fraction": 1.0 - float(fired_c.float().mean()),
        "eval_tokens": float(n),
    }


@dataclass(frozen=True)
class ResumeState:
    """What a training checkpoint restores: weights, optimiser/counters, loader position."""

    step: int
    model_tensors: dict[str, Tensor]
    train_tensors: dict[str, Tensor]
    loader_position: dict[str, Any]
    kmeans_info: dict[str, float]
    run_key: str | None

    @classmethod
    def load(cls, checkpoint_dir: Path) -> ResumeState | None:
        loaded = load_train_checkpoint(checkpoint_dir)
        if loaded is None:
            return None
        model_tensors, _header, train_tensors, state = loaded
        return cls(
            step=int(state["step"]),
            model_tensors=model_tensors,
            train_tensors=train_tensors,
            loader_position=state["loader"],
            kmeans_info=dict(state.get("kmeans", {})),
            run_key=state.get("run_key"),
        )


@dataclass(frozen=True)
class _Plan:
    """The schedule of a run: its length, where this call stops, and the resume key."""

    sae_cfg: RASAEConfig
    total_steps: int
    run_steps: int
    version: str
    run_key: str
    adjustments: list[str]


def _plan(loader: TokenLoader, sae_cfg: RASAEConfig, train_cfg: TrainConfig) -> _Plan:
    if loader.d != sae_cfg.d:
        raise ValueError(f"the stores hold {loader.d}-d tokens but the SAE expects d={sae_cfg.d}")
    sae_cfg, adjustments = sae_cfg.clamped_to(loader.n_tokens)
    version = loader.version()
    total_steps = max(1, loader.steps_for(train_cfg.epochs))
    if train_cfg.max_tokens is not None:
        budget_steps = max(1, train_cfg.max_tokens // train_cfg.batch_size)
        if budget_steps < total_steps:
            adjustments.append(
                f"max_tokens {train_cfg.max_tokens}: {budget_steps} of {total_steps} steps"
            )
            total_steps = budget_steps
    if loader.n_tokens < train_cfg.batch_size:
        adjustments.append(
            f"batch_size {train_cfg.batch_size} > {loader.n_tokens} tokens: one step per epoch"
        )
    # what decides the trajectory; run control (logging, checkpoint cadence, budget) may change
    trajectory = {k: v for k, v in train_cfg.to_dict().items() if k not in _RUN_CONTROL}
    run_key = json.dumps(
        {"sae": sae_cfg.to_dict(), "train": trajectory, "data": version}, sort_keys=True
    )
    run_steps = min(total_steps, train_cfg.max_steps or total_steps)
    return _Plan(sae_cfg, total_steps, run_steps, version, run_key, adjustments)


def _fresh_trainer(
    stores: list[str | Path],
    plan: _Plan,
    train_cfg: TrainConfig,
    n_tokens: int,
    device: torch.device,
) -> tuple[Trainer, dict[str, float]]:
    """A new model: k-means candidates (unless fused), projected, encoder = dictionary."""
    sae_cfg = plan.sae_cfg
    kmeans_info: dict[str, float] = {}
    candidates = None
    if not sae_cfg.fused:
        km_loader = TokenLoader(
            stores,
            min(train_cfg.kmeans_batch, n_tokens),
            train_cfg.buffer_tokens,
            train_cfg.seed + 1,
        )
        # small data: ten passes are plenty; large data: the configured token budget
        n_km = max(min(train_cfg.kmeans_tokens, 10 * n_tokens), sae_cfg.n_candidates)
        candidates, kmeans_info = minibatch_kmeans(km_loader, sae_cfg.n_candidates, n_km, device)
    model = RelaxedArchetypalSAE(sae_cfg, candidates).to(device)
    model.project_()
    model.init_encoder_from_dictionary()
    model.train()
    return Trainer(model, train_cfg, device), kmeans_info


def _resumed_trainer(
    resume: ResumeState,
    plan: _Plan,
    train_cfg: TrainConfig,
    loader: TokenLoader,
    device: torch.device,
) -> Trainer:
    model = build_empty(plan.sae_cfg)
    model.load_state_dict(resume.model_tensors, assign=True)
    model.to(device).train()
    trainer = Trainer(model, train_cfg, device)
    trainer.load_state_tensors(resume.train_tensors)
    loader.load_state(resume.loader_position, resume.train_tensors["loader.carry"].numpy())
    return trainer


def _save_checkpoint(
    checkpoint_dir: Path,
    trainer: Trainer,
    loader: TokenLoader,
    plan: _Plan,
    step: int,
    kmeans: dict[str, float],
) -> None:
    position, carry = loader.state()
    save_train_checkpoint(
        checkpoint_dir,
        trainer.model,
        {"step": step, "data_version": plan.version},
        {**trainer.state_tensors(), "loader.carry": torch.from_numpy(carry)},
        {"step": step, "loader": position, "run_key": plan.run_key, "kmeans": kmeans},
    )


@torch.no_grad()
def _log_record(
    trainer: Trainer,
    x: Tensor,
    out: dict[str, Tensor],
    step: int,
    lr: float,
    plan: _Plan,
    tokens_per_s: float,
) -> dict[str, Any]:
    return {
        "step": step,
        "total_steps": plan.total_steps,
        "lr": lr,
        "loss": float(out["loss"]),
        "mse": float(out["mse"]),
        "aux_loss": float(out["aux"]),
        "r2": explained_variance(x, out["x_hat"]),
        "l0": float(out["l0"]),
        "dead_fraction": float(out["dead"].float().mean()),
        "threshold": _finite_or_none(float(trainer.model.threshold)),
        "grad_norm": trainer.last_grad_norm,
        "tokens_per_s": tokens_per_s,
    }


def _run_steps(
    trainer: Trainer,
    loader: TokenLoader,
    plan: _Plan,
    step: int,
    checkpoint_dir: Path | None,
    log: LogFn | None,
    kmeans: dict[str, float],
) -> tuple[int, float]:
    """Optimise from ``step`` to ``plan.run_steps``; returns (last step, loop seconds)."""
    cfg = trainer.cfg
    tokens_at_start = step * cfg.batch_size
    t_loop = time.perf_counter()
    batches = iter(loader)
    while step < plan.run_steps:
        x = next(batches).to(trainer.device, non_blocking=True)
        lr = lr_at(step, plan.total_steps, cfg)
        out = trainer.step(x, lr)
        step += 1
        if checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _save_checkpoint(checkpoint_dir, trainer, loader, plan, step, kmeans)
        if log and (step % max(1, cfg.log_every) == 0 or step == plan.run_steps):
            elapsed = time.perf_counter() - t_loop
            rate = (step * cfg.batch_size - tokens_at_start) / elapsed if elapsed > 0 else 0.0
            log(_log_record(trainer, x, out, step, lr, plan, rate))
    return step, time.perf_counter() - t_loop


def _final_metrics(
    trainer: Trainer, loader: TokenLoader, plan: _Plan, step: int, first_step: int, loop_s: float
) -> dict[str, Any]:
    model, cfg = trainer.model, trainer.cfg
    model.eval()
    eval_tokens = loader.sample(min(cfg.eval_tokens, loader.n_tokens), cfg.seed + 2)
    metrics: dict[str, Any] = evaluate(model, eval_tokens, trainer.device)
    tokens_seen = step * cfg.batch_size
    trained = tokens_seen - first_step * cfg.batch_size
    dead_after = min(cfg.dead_after_tokens, max(1, tokens_seen))
    metrics.update(
        {
            "steps": step,
            "total_steps": plan.total_steps,
            "tokens_seen": tokens_seen,
            "epochs_seen": tokens_seen / loader.n_tokens,
            "dataset_tokens": loader.n_tokens,
            "train_tokens_per_s": trained / loop_s if loop_s > 0 else 0.0,
            "n_concepts": plan.sae_cfg.n_concepts,
            "n_candidates": plan.sae_cfg.n_candidates,
            "threshold": _finite_or_none(float(model.threshold)),
            "dead_fraction_train": float((trainer.silent_c >= dead_after).float().mean()),
            "device": str(trainer.device),
        }
    )
    return metrics


def train_sae(
    feature_stores: Sequence[str | Path],
    sae_cfg: RASAEConfig,
    train_cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    log: LogFn | None = None,
) -> TrainResult:
    """Train an RA-SAE on every valid token of ``feature_stores`` (RowStores of ``tokens``).

    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` steps and an
    existing one for the same configs and data is resumed exactly.
    """
    t0 = time.perf_counter()
    device = resolve_device(train_cfg.device)
    stores = list(feature_stores)
    loader = TokenLoader(stores, train_cfg.batch_size, train_cfg.buffer_tokens, train_cfg.seed)
    plan = _plan(loader, sae_cfg, train_cfg)
    adjustments = list(plan.adjustments)
    torch.manual_seed(train_cfg.seed)
    resume = ResumeState.load(checkpoint_dir) if checkpoint_dir else None
    if resume is not None and resume.run_key != plan.run_key:
        adjustments.append("ignored a checkpoint of another config or data version")
        resume = None
    if resume is None:
        trainer, kmeans_info = _fresh_trainer(stores, plan, train_cfg, loader.n_tokens, device)
        first_step = 0
    else:
        trainer = _resumed_trainer(resume, plan, train_cfg, loader, device)
        kmeans_info, first_step = resume.kmeans_info, resume.step
        adjustments.append(f"resumed from step {first_step}")
    step, loop_s = _run_steps(trainer, loader, plan, first_step, checkpoint_dir, log, kmeans_info)
    metrics = _final_metrics(trainer, loader, plan, step, first_step, loop_s)
    metrics.update(
        {"seconds": time.perf_counter() - t0, "adjustments": list(adjustments), **kmeans_info}
    )
    return TrainResult(trainer.model, metrics, plan.version, plan.sae_cfg, train_cfg, adjustments)

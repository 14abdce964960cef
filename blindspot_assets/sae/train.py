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

from blindspot_assets.devices import choose_device
from blindspot_assets.sae.checkpoint import (
    build_empty,
    load_train_checkpoint,
    save_train_checkpoint,
)
from blindspot_assets.sae.config import RASAEConfig, TrainConfig
from blindspot_assets.sae.data import TokenLoader
from blindspot_assets.sae.kmeans import minibatch_kmeans
from blindspot_assets.sae.model import RelaxedArchetypalSAE, explained_variance

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
    model: RelaxedArchetypalSAE, pre_nc: Tensor, residual_nd: Tensor, dead_c: Tensor
) -> Tensor:
    """AuxK (Gao et al. 2024): the top ``aux_k`` dead concepts must explain the residual.

    Uses the dead concepts' pre-activations *before* ReLU: a concept whose pre-activation is
    negative on every token (truly dead) still gets a gradient that moves it toward the data.
    Normalised by the residual's energy, so its weight does not depend on the data's scale.
    """
    n_dead = int(dead_c.sum())
    if n_dead == 0:
        return pre_nc.new_zeros(())
    k_aux = min(model.cfg.effective_aux_k, n_dead)
    masked = pre_nc.masked_fill(~dead_c, float("-inf"))
    idx = masked.topk(k_aux, dim=-1).indices
    target = residual_nd.detach().float()
    e_hat = model.decode_topk(pre_nc.gather(-1, idx), idx).float()
    err = ((e_hat - target) ** 2).sum(dim=-1).mean()
    return err / ((target**2).sum(dim=-1).mean() + 1e-8)


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

    def dead_c(self) -> Tensor:
        return self.silent_c >= self.cfg.dead_after_tokens

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
            pre = model.pre_activations(x_nd)
            if model.cfg.sparsity == "topk":
                # relu(topk(pre)) == topk(relu(pre)) but touches k values per token, not c
                vals, idx = pre.topk(model.cfg.k, dim=-1)
                vals = torch.relu(vals)
                x_hat = model.decode_topk(vals, idx).float()
                active_nk = (idx, vals.detach() > 0)
            else:
                z = model.sparsify(torch.relu(pre), update_threshold=True)
                x_hat = model.decode_sparse(z).float()
            mse = ((x_hat - x_nd) ** 2).mean()
            aux = auxk_loss(model, pre, x_nd - x_hat, dead_c) if cfg.aux_weight > 0 else mse * 0
            loss = mse + cfg.aux_weight * aux
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.last_grad_norm = float(norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        model.project_()
        with torch.no_grad():
            if model.cfg.sparsity == "topk":
                idx, on = active_nk
                fired_c = torch.zeros_like(dead_c).index_fill_(0, idx[on], True)
                l0 = on.sum(dim=-1).float().mean()
            else:
                fired_c = (z > 0).any(dim=0)
                l0 = (z > 0).sum(dim=-1).float().mean()
            self.silent_c += x_nd.shape[0]
            self.silent_c[fired_c] = 0
        return {
            "loss": loss.detach(),
            "mse": mse.detach(),
            "aux": aux.detach(),
            "x_hat": x_hat.detach(),
            "fired": fired_c,
            "l0": l0,
            "dead": dead_c,
        }

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
    loader = TokenLoader(
        list(feature_stores),
        train_cfg.batch_size,
        train_cfg.buffer_tokens,
        train_cfg.seed,
    )
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
    run_steps = min(total_steps, train_cfg.max_steps or total_steps)
    if loader.n_tokens < train_cfg.batch_size:
        adjustments.append(
            f"batch_size {train_cfg.batch_size} > {loader.n_tokens} tokens: one step per epoch"
        )
    # what decides the trajectory; run control (logging, checkpoint cadence, budget) may change
    trajectory = {k: v for k, v in train_cfg.to_dict().items() if k not in _RUN_CONTROL}
    run_key = json.dumps(
        {"sae": sae_cfg.to_dict(), "train": trajectory, "data": version}, sort_keys=True
    )

    torch.manual_seed(train_cfg.seed)
    resumed = load_train_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if resumed is not None and resumed[3].get("run_key") != run_key:
        adjustments.append("ignored a checkpoint of another config or data version")
        resumed = None

    kmeans_info: dict[str, float] = {}
    if resumed is None:
        candidates = None
        if not sae_cfg.fused:
            km_loader = TokenLoader(
                list(feature_stores),
                min(train_cfg.kmeans_batch, loader.n_tokens),
                train_cfg.buffer_tokens,
                train_cfg.seed + 1,
            )
            # small data: ten passes are plenty; large data: the configured token budget
            n_km = max(min(train_cfg.kmeans_tokens, 10 * loader.n_tokens), sae_cfg.n_candidates)
            candidates, kmeans_info = minibatch_kmeans(
                km_loader, sae_cfg.n_candidates, n_km, device
            )
        model = RelaxedArchetypalSAE(sae_cfg, candidates).to(device)
        model.project_()
        model.init_encoder_from_dictionary()
        model.train()
        trainer = Trainer(model, train_cfg, device)
        step = 0
    else:
        model_t, _, train_t, state = resumed
        model = build_empty(sae_cfg)
        model.load_state_dict(model_t, assign=True)
        model.to(device).train()
        trainer = Trainer(model, train_cfg, device)
        trainer.load_state_tensors(train_t)
        loader.load_state(state["loader"], train_t["loader.carry"].numpy())
        step = int(state["step"])
        kmeans_info = state.get("kmeans", {})
        adjustments.append(f"resumed from step {step}")

    tokens_at_start = step * train_cfg.batch_size
    t_loop = time.perf_counter()
    batches = iter(loader)
    while step < run_steps:
        x = next(batches).to(device, non_blocking=True)
        lr = lr_at(step, total_steps, train_cfg)
        out = trainer.step(x, lr)
        step += 1
        if checkpoint_dir and train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0:
            position, carry = loader.state()
            save_train_checkpoint(
                checkpoint_dir,
                model,
                {"step": step, "data_version": version},
                {**trainer.state_tensors(), "loader.carry": torch.from_numpy(carry)},
                {"step": step, "loader": position, "run_key": run_key, "kmeans": kmeans_info},
            )
        if log and (step % max(1, train_cfg.log_every) == 0 or step == run_steps):
            elapsed = time.perf_counter() - t_loop
            with torch.no_grad():
                log(
                    {
                        "step": step,
                        "total_steps": total_steps,
                        "lr": lr,
                        "loss": float(out["loss"]),
                        "mse": float(out["mse"]),
                        "aux_loss": float(out["aux"]),
                        "r2": explained_variance(x, out["x_hat"]),
                        "l0": float(out["l0"]),
                        "dead_fraction": float(out["dead"].float().mean()),
                        "threshold": _finite_or_none(float(model.threshold)),
                        "grad_norm": trainer.last_grad_norm,
                        "tokens_per_s": (step * train_cfg.batch_size - tokens_at_start) / elapsed
                        if elapsed > 0
                        else 0.0,
                    }
                )

    loop_seconds = time.perf_counter() - t_loop
    model.eval()
    eval_tokens = loader.sample(min(train_cfg.eval_tokens, loader.n_tokens), train_cfg.seed + 2)
    metrics: dict[str, Any] = evaluate(model, eval_tokens, device)
    tokens_seen = step * train_cfg.batch_size
    metrics.update(
        {
            "steps": step,
            "total_steps": total_steps,
            "tokens_seen": tokens_seen,
            "epochs_seen": tokens_seen / loader.n_tokens,
            "dataset_tokens": loader.n_tokens,
            "seconds": time.perf_counter() - t0,
            "train_tokens_per_s": (tokens_seen - tokens_at_start) / loop_seconds
            if loop_seconds > 0
            else 0.0,
            "n_concepts": sae_cfg.n_concepts,
            "n_candidates": sae_cfg.n_candidates,
            "threshold": _finite_or_none(float(model.threshold)),
            "dead_fraction_train": float(
                (trainer.silent_c >= min(train_cfg.dead_after_tokens, max(1, tokens_seen)))
                .float()
                .mean()
            ),
            "device": str(device),
            "adjustments": list(adjustments),
            **kmeans_info,
        }
    )
    return TrainResult(model, metrics, version, sae_cfg, train_cfg, adjustments)

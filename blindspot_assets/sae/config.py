"""Frozen configs of the RA-SAE: one for the model, one for its training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from blindspot_assets.config import SAESpec

SPARSITIES = ("topk", "batchtopk")


@dataclass(frozen=True)
class RASAEConfig:
    """A Relaxed Archetypal SAE (docs/method.md §4).

    ``n_candidates == 0`` means the dictionary is stored fused (``D``, c × d) with no
    archetypal parametrisation: an inference-only model, e.g. an imported checkpoint.
    """

    d: int
    n_concepts: int
    sparsity: str = "batchtopk"  # topk | batchtopk
    k: int = 32  # active concepts per token (TopK) or on average per token (BatchTopK)
    n_candidates: int = 32000
    delta_relax: float = 0.01
    encoder_layernorm: bool = True
    layernorm_eps: float = 1e-5
    use_multiplier: bool = True  # train the scale m of D = exp(m) · (...)
    threshold_momentum: float = 0.9  # running θ ← μ·θ + (1−μ)·θ_batch, as overcomplete
    aux_k: int | None = None  # AuxK: dead concepts used to model the residual; None → d // 2

    def __post_init__(self) -> None:
        if self.sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, got {self.sparsity!r}")
        if self.d < 1 or self.n_concepts < 1:
            raise ValueError(f"d and n_concepts must be ≥ 1 (got d={self.d}, c={self.n_concepts})")
        if not 1 <= self.k <= self.n_concepts:
            raise ValueError(f"k must be in [1, n_concepts={self.n_concepts}], got {self.k}")
        if self.n_candidates < 0:
            raise ValueError(f"n_candidates must be ≥ 0, got {self.n_candidates}")
        if self.delta_relax < 0:
            raise ValueError(f"delta_relax must be ≥ 0, got {self.delta_relax}")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise ValueError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}")

    @property
    def fused(self) -> bool:
        return self.n_candidates == 0

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k if self.aux_k is not None else max(1, self.d // 2), self.n_concepts)

    @classmethod
    def from_spec(cls, spec: SAESpec, d: int) -> RASAEConfig:
        return cls(
            d=d,
            n_concepts=spec.n_concepts,
            sparsity=spec.sparsity,
            k=min(spec.k, spec.n_concepts),
            n_candidates=spec.n_candidates,
            delta_relax=spec.delta_relax,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RASAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def clamped_to(self, n_tokens: int) -> tuple[RASAEConfig, list[str]]:
        """Shrink candidates and concepts to what ``n_tokens`` training tokens can support.

        Candidates are k-means centroids, so there cannot be more of them than tokens; a concept
        count above the token count cannot all be used. Returns the config and what changed.
        """
        notes: list[str] = []
        cfg = self
        if not cfg.fused and cfg.n_candidates > n_tokens:
            notes.append(f"n_candidates {cfg.n_candidates} → {n_tokens} (only {n_tokens} tokens)")
            cfg = replace(cfg, n_candidates=n_tokens)
        if cfg.n_concepts > n_tokens:
            notes.append(f"n_concepts {cfg.n_concepts} → {n_tokens} (only {n_tokens} tokens)")
            cfg = replace(cfg, n_concepts=n_tokens, k=min(cfg.k, n_tokens))
        return cfg, notes


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults follow the released checkpoint (docs/method.md §4)."""

    epochs: int = 1
    batch_size: int = 4096
    lr: float = 5e-4
    lr_end: float = 1e-6
    warmup_frac: float = 0.05
    aux_weight: float = 1.0 / 32
    weight_decay: float = 0.0
    seed: int = 0
    buffer_tokens: int = 1 << 17  # shuffle window of the token loader (fp16 in memory)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp_dtype: str = "bfloat16"  # autocast dtype on CUDA (bfloat16 | float16); CPU stays fp32
    checkpoint_every: int = 1000  # steps; 0 disables
    log_every: int = 100  # steps
    max_steps: int | None = None  # stop early (time budgets); the LR schedule keeps its length
    kmeans_tokens: int = 1 << 21  # tokens seen by the streaming mini-batch k-means
    kmeans_batch: int = 8192
    dead_after_tokens: int = 10_000_000  # a concept silent this long counts as dead (AuxK)
    eval_tokens: int = 1 << 16  # tokens of the final evaluation pass (metrics)
    # Token budget of the whole run: the schedule is min(epochs × dataset, max_tokens) long.
    # At 1M images an epoch is ~261M tokens; a budget keeps SAE time fixed as N grows.
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be ≥ 1")
        if self.buffer_tokens < 1:
            raise ValueError("buffer_tokens must be ≥ 1")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
        if self.max_tokens is not None and self.max_tokens < self.batch_size:
            raise ValueError(f"max_tokens {self.max_tokens} is below one batch ({self.batch_size})")

    @classmethod
    def from_spec(cls, spec: SAESpec, **overrides: Any) -> TrainConfig:
        base = cls(
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            lr=spec.lr,
            lr_end=spec.lr_end,
            warmup_frac=spec.warmup_frac,
            aux_weight=spec.aux_weight,
            seed=spec.seed,
            max_tokens=spec.max_train_tokens,
        )
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

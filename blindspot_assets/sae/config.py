"""Frozen configs of the RA-SAE: one for the model, one for its training run.

Both are nested in the run config's ``sae`` block (``config.SAESpec.model`` and ``.train``),
whose YAML keys are their field names: a default or a check is written here only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from blindspot_assets.config_fields import SET_BY_RUN, ConfigError, check_fields

Sparsity = Literal["topk", "batchtopk"]


@dataclass(frozen=True)
class RASAEConfig:
    """A Relaxed Archetypal SAE (docs/method.md §4).

    ``n_candidates == 0`` means the dictionary is stored fused (``D``, c × d) with no
    archetypal parametrisation: an inference-only model, e.g. an imported checkpoint.
    """

    d: int = field(default=0, metadata=SET_BY_RUN)
    """Token width: the encoder's. 0 in a run config, where ``sized(d)`` sets it at training."""
    n_concepts: int = 32000
    """Concepts c of the dictionary (the released checkpoint: 32,000)."""
    sparsity: Sparsity = "batchtopk"
    """topk: k codes per token; batchtopk: k per token on average over a batch, a global
    threshold θ at inference."""
    k: int = 32
    """Active concepts per token (TopK) or on average per token (BatchTopK); ≤ n_concepts."""
    n_candidates: int = 32000
    """Archetype candidates C (k-means centroids of the training tokens); 0: a fused dictionary."""
    delta_relax: float = 0.01
    """δ: how far an atom may leave the convex hull of the candidates."""
    encoder_layernorm: bool = True
    """LayerNorm the concept pre-activations x·Eᵀ + b (over the c concepts), as the released
    checkpoint does; before the sparsity."""
    layernorm_eps: float = 1e-5
    """ε of that LayerNorm."""
    use_multiplier: bool = True
    """Train the scale m of D = exp(m) · (...)."""
    threshold_momentum: float = 0.9
    """Running θ ← μ·θ + (1−μ)·θ_batch of BatchTopK, as overcomplete."""
    aux_k: int | None = None
    """AuxK: dead concepts used to model the residual; None → d // 2."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.d < 0:
            raise ConfigError(f"d must be ≥ 1 (0: not sized yet), got {self.d}")
        if self.n_concepts < 1:
            raise ConfigError(f"n_concepts must be ≥ 1, got {self.n_concepts}")
        if not 1 <= self.k <= self.n_concepts:
            raise ConfigError(
                f"k must be in [1, n_concepts={self.n_concepts}], got {self.k}: set k within it "
                "or raise n_concepts"
            )
        if self.n_candidates < 0:
            raise ConfigError(f"n_candidates must be ≥ 0 (0: fused), got {self.n_candidates}")
        if self.delta_relax < 0:
            raise ConfigError(f"delta_relax must be ≥ 0, got {self.delta_relax}")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise ConfigError(
                f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}"
            )

    @property
    def fused(self) -> bool:
        return self.n_candidates == 0

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k if self.aux_k is not None else max(1, self.d // 2), self.n_concepts)

    def sized(self, d: int) -> RASAEConfig:
        """This config for tokens of width ``d`` (the encoder's)."""
        if d < 1:
            raise ConfigError(f"d must be ≥ 1, got {d}")
        return replace(self, d=d)

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
    """Passes over the training tokens (see max_tokens)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    lr: float = 5e-4
    """Peak learning rate (Adam), after the warm-up."""
    lr_end: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_frac: float = 0.05
    """Fraction of the steps spent warming up linearly, in [0, 1)."""
    aux_weight: float = 1.0 / 32
    """Weight of the AuxK loss (dead concepts modelling the residual)."""
    weight_decay: float = 0.0
    """Adam's weight decay."""
    seed: int = 0
    """Seed of the initialisation, the k-means and the token order."""
    buffer_tokens: int = 1 << 17
    """Shuffle window of the token loader (fp16 in memory)."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Autocast dtype on CUDA; CPU stays float32."""
    checkpoint_every: int = 1000
    """Steps between resumable checkpoints; 0 disables."""
    log_every: int = 100
    """Steps between progress lines."""
    max_steps: int | None = None
    """Stop early (time budgets); the LR schedule keeps its length."""
    kmeans_tokens: int = 1 << 21
    """Tokens seen by the streaming mini-batch k-means that places the candidates."""
    kmeans_batch: int = 8192
    """Tokens per k-means step."""
    dead_after_tokens: int = 10_000_000
    """A concept silent this long counts as dead (AuxK)."""
    eval_tokens: int = 1 << 16
    """Tokens of the final evaluation pass (metrics)."""
    max_tokens: int | None = None
    """Token budget of the whole run: the schedule is min(epochs × dataset, max_tokens) long.
    At 1M images an epoch is ~261M tokens; a budget keeps SAE time fixed as N grows."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"epochs and batch_size must be ≥ 1, got {self.epochs} and {self.batch_size}"
            )
        if self.buffer_tokens < 1:
            raise ConfigError(f"buffer_tokens must be ≥ 1, got {self.buffer_tokens}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ConfigError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.max_tokens is not None and self.max_tokens < self.batch_size:
            raise ConfigError(
                f"max_tokens {self.max_tokens} is below one batch ({self.batch_size}): raise it "
                "or lower batch_size"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

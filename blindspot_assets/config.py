"""The run configuration: one YAML file names the real source, the model registry, the encoder,
the SAE and the statistics. Loaded into frozen dataclasses; every mistake is reported with the
field that is wrong and how to fix it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from blindspot_assets.store.layout import DataLayout, check_key

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
CONFIG_ENV = "BLINDSPOT_CONFIG"


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # demo | laion_parquet | img2dataset | folder
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    family: str  # demo | stable_diffusion | pixart | kandinsky | pregenerated | control
    params: dict[str, Any] = field(default_factory=dict)
    # A null control: a model known to have no blindspot (family ``control``, or a faithful
    # re-render marked ``control: true``). Any concept flagged on it is a pipeline artefact.
    control: bool = False


@dataclass(frozen=True)
class EncoderSpec:
    model_id: str = "facebook/dinov2-with-registers-base"
    revision: str = "main"
    image_size: int = 224  # crop size; the resize side is round(image_size * 256 / 224)
    batch_size: int = 32
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"
    # Threads decoding and preprocessing the next batches while the model runs (0: inline).
    decode_workers: int = 4
    # dtype of the stored tokens: float16 halves the store; float32 keeps the encoder's output
    # exactly, so a hard threshold on the SAE's pre-activations sees what the model computed.
    store_dtype: str = "float16"  # float16 | float32
    # Demo only: save a seeded, randomly initialised tiny model at model_id if none is there.
    init_random_tiny: bool = False


IMAGE_CODECS = ("jpeg", "png", "as_stored")


@dataclass(frozen=True)
class ImagesSpec:
    """How every image, real or generated, reaches the encoder (``encoders/images.py``)."""

    # jpeg: both sides re-encoded as JPEG at ``quality`` in memory before the encoder (default);
    # png: lossless (only when both sides are lossless); as_stored: no pipeline at all (only to
    # measure the file-format artefact).
    codec: str = "jpeg"
    # JPEG quality 1..95 (75 is PIL's default, what the paper's authors stored both sides at),
    # or "match_real": the median quality estimated from the real set's JPEG files.
    quality: int | str = 75
    # Downscale (never upscale or crop) so the shorter side is at most this; null: keep size.
    max_short_side: int | None = 512
    resample: str = "lanczos"  # lanczos | bicubic

    def __post_init__(self) -> None:
        if self.codec not in IMAGE_CODECS:
            raise ConfigError(
                f"images.codec must be one of {list(IMAGE_CODECS)}, got {self.codec!r}"
            )
        if self.quality != "match_real" and not (
            isinstance(self.quality, int) and 1 <= self.quality <= 95
        ):
            raise ConfigError(
                f"images.quality must be an integer 1..95 or 'match_real', got {self.quality!r}"
            )
        if self.max_short_side is not None and (
            not isinstance(self.max_short_side, int) or self.max_short_side < 16
        ):
            raise ConfigError(
                "images.max_short_side must be an integer >= 16 or null, got "
                f"{self.max_short_side!r}"
            )
        if self.resample not in ("lanczos", "bicubic"):
            raise ConfigError(f"images.resample must be lanczos or bicubic, got {self.resample!r}")


@dataclass(frozen=True)
class SAESpec:
    n_concepts: int = 32000
    sparsity: str = "batchtopk"  # topk | batchtopk
    k: int = 32
    n_candidates: int = 32000
    delta_relax: float = 0.01
    train_on: str = "real"  # real | real+generated
    epochs: int = 1
    max_train_tokens: int | None = None  # token budget of training (caps epochs × dataset)
    batch_size: int = 4096
    lr: float = 5e-4
    lr_end: float = 1e-6
    warmup_frac: float = 0.05
    aux_weight: float = 1.0 / 32
    seed: int = 0
    k_max_store: int = 64  # how many active concepts per token the code store keeps
    pretrained: str | None = None  # a converted checkpoint dir, or a released .pt to import
    # Train a second SAE with this seed (same data and config) and mark in `blindspots` which
    # flagged concepts replicate in it (``stats/replication.py``); null: off.
    replicate_seed: int | None = None
    # θ of a released BatchTopK checkpoint (codes below θ are zero). Taken first; then θ from a
    # config.json beside the .pth; then the pickled running_threshold. None known: an error.
    threshold: float | None = None


@dataclass(frozen=True)
class StatsSpec:
    temperature: float = 0.8
    suppressed_below: float = 0.1
    exaggerated_above: float = 0.9
    alpha: float = 0.05
    # Margins of a negligible change: significant = BH at alpha rejects |d_z| ≤ min_effect_size
    # and |relative| ≤ min_relative (a rare concept that is gone has relative = −1); 0 = unused.
    min_effect_size: float = 0.1
    min_relative: float = 0.25
    n_bootstrap: int = 1000
    n_permutations: int = 1000
    top_images: int = 20
    seed: int = 0
    # Model pairs compared as a model and its variant (e.g. [sd15, sd15-dpo]) on ‖ξ(x')−ξ(x)‖.
    variant_pairs: tuple[tuple[str, str], ...] = ()
    # Real–real nearest-neighbour distance quantile below which a generated image is a
    # memorisation candidate.
    memorization_quantile: float = 0.001
    top_datapoint_concepts: int = 5
    label_terms: int = 5
    # How a concept's top images are ranked: patch_mean = mean of z[t, k] over the patch tokens
    # (the paper's authors), token_sum = ξ_k, the sum over every token.
    top_images_by: str = "token_sum"
    # Concept co-occurrence (ZᵀZ): over token codes or per-image energies; partners kept per
    # concept; concepts per pass (memory: cooccurrence_block × n_concepts float64).
    cooccurrence_over: str = "tokens"
    cooccurrence_top: int = 10
    cooccurrence_block: int = 2048
    # Confirm flagged blindspots (``blindspot_verification``): the top ``verify_top`` significant
    # concepts of each kind, ``verify_captions`` captions each, ``verify_images`` new images per
    # caption: at most 2 × top × captions × images generations per model (0 top: off).
    verify_top: int = 3
    verify_images: int = 4
    verify_captions: int = 8
    # Blindspot changes between two generated sets of the same real images (base, candidate),
    # e.g. [sd15, sd15-dpo] or [demo-a, demo-a-v2] (table blindspot_changes, the gate CLI).
    compare: tuple[tuple[str, str], ...] = ()
    # Which changes are regressions: a status (new, resolved, worsened, improved, persisting,
    # borderline), optionally with a kind (new-suppressed); a list or a comma-separated string.
    fail_on: tuple[str, ...] = ("new-suppressed", "new-exaggerated", "worsened")


@dataclass(frozen=True)
class ScaleSpec:
    # Workers that each dataset's per-image stages (generation, features, concept codes) fan
    # out over: one Dagster step per shard, all writing one store.
    shards: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ConfigError(f"scale.shards must be an integer ≥ 1, got {self.shards!r}")


@dataclass(frozen=True)
class LabelsSpec:
    """Concept names from a vision-language / captioning model (``labels/``); off by default."""

    # A transformers image-text-to-text checkpoint (hub id or local folder); "none": off.
    model_id: str = "none"
    revision: str = "main"
    # null: "a picture of" for a captioning model (a caption prefix), else an instruction.
    prompt: str | None = None
    max_new_tokens: int = 20
    images_per_concept: int = 5  # top real images captioned per concept
    concepts: int = 32  # how many concepts are named: the flagged ones first
    crop: bool = True  # crop each image to the concept's patches (the report's heat maps)
    image_px: int = 384  # side of the square each image (or crop) is resized to
    name_words: int = 3  # at most this many words in a name
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16

    def __post_init__(self) -> None:
        counts = ("max_new_tokens", "images_per_concept", "concepts", "image_px", "name_words")
        for name in (*counts, "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"labels.{name} must be an integer ≥ 1, got {value!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(
                f"labels.dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}"
            )

    @property
    def enabled(self) -> bool:
        return str(self.model_id).strip().lower() not in ("", "none", "null")


@dataclass(frozen=True)
class RunConfig:
    name: str
    data_root: Path
    seed: int
    real: SourceSpec
    models: dict[str, ModelSpec]
    encoder: EncoderSpec
    sae: SAESpec
    stats: StatsSpec
    source_path: Path | None = None
    scale: ScaleSpec = field(default_factory=ScaleSpec)
    # Zarr stores and Parquet tables: under data_root unless a path or fsspec URL is given
    store_root: str | Path | None = None
    images: ImagesSpec = field(default_factory=ImagesSpec)
    labels: LabelsSpec = field(default_factory=LabelsSpec)

    @property
    def controls(self) -> list[str]:
        """The model keys that are null controls, in registry order."""
        return [k for k, m in self.models.items() if m.control]

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_root, self.store_root)

    def model(self, key: str) -> ModelSpec:
        if key not in self.models:
            raise ConfigError(
                f"unknown model {key!r}: the run config {self.source_path} registers "
                f"{sorted(self.models)}; add an entry under 'models:' or pick one of those"
            )
        return self.models[key]


def _dataclass_from(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in '{where}'; known fields: {sorted(known)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"bad '{where}': {exc}") from exc


def parse_config(raw: dict[str, Any], source_path: Path | None = None) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("a run config must be a YAML mapping")
    base = source_path.parent if source_path else Path.cwd()
    for required in ("name", "data_root", "real", "models"):
        if required not in raw:
            raise ConfigError(f"run config {source_path} lacks the required field '{required}'")
    allowed = {"name", "data_root", "store_root", "seed", "real", "models", "encoder", "sae"}
    allowed |= {"stats", "scale", "images"}
    allowed |= {"labels"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"unknown top-level field(s) {extra}; allowed: {sorted(allowed)}")

    real_raw = dict(raw["real"] or {})
    if "kind" not in real_raw:
        raise ConfigError("'real.kind' is required: demo | laion_parquet | img2dataset | folder")
    real = SourceSpec(kind=str(real_raw.pop("kind")), params=real_raw)

    data_root = Path(os.path.expandvars(str(raw["data_root"])))
    if not data_root.is_absolute():
        data_root = (base / data_root).resolve()
    models_raw = raw["models"]
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError("'models' must map at least one model key to its entry")
    models: dict[str, ModelSpec] = {}
    for key, entry in models_raw.items():
        try:
            check_key(str(key))
        except ValueError as exc:
            raise ConfigError(f"models.{key}: {exc}") from exc
        entry = dict(entry or {})
        if "family" not in entry:
            raise ConfigError(f"models.{key}.family is required (e.g. demo, stable_diffusion)")
        family = str(entry.pop("family"))
        if family == "control":  # a copy of the run's own real images unless told otherwise
            entry.setdefault("real_images", str(DataLayout(data_root).real_images))
        control = entry.pop("control", family == "control")
        if not isinstance(control, bool) or (family == "control" and not control):
            raise ConfigError(
                f"models.{key}.control must be true or false (always true for "
                f"the control family), got {control!r}"
            )
        models[str(key)] = ModelSpec(str(key), family, entry, control)

    encoder = _dataclass_from(EncoderSpec, raw.get("encoder"), "encoder")
    # a local folder (the demo's, or one written as "./…" / "../…") is relative to this file;
    # a hub id never starts with a dot
    local = encoder.init_random_tiny or encoder.model_id.startswith(("./", "../"))
    if local and not Path(encoder.model_id).is_absolute():
        encoder = EncoderSpec(
            **{**encoder.__dict__, "model_id": str((base / encoder.model_id).resolve())}
        )
    sae = _dataclass_from(SAESpec, raw.get("sae"), "sae")
    if sae.pretrained:
        pretrained = Path(os.path.expandvars(str(sae.pretrained))).expanduser()
        if not pretrained.is_absolute():  # relative to the config file, like data_root
            pretrained = (base / pretrained).resolve()
        sae = SAESpec(**{**sae.__dict__, "pretrained": str(pretrained)})
    if sae.threshold is not None and not sae.pretrained:
        raise ConfigError("sae.threshold applies to a released checkpoint: set sae.pretrained")
    if sae.threshold is not None and (
        isinstance(sae.threshold, bool)
        or not isinstance(sae.threshold, int | float)
        or not math.isfinite(sae.threshold)
    ):
        raise ConfigError(f"sae.threshold must be a finite number, got {sae.threshold!r}")
    if sae.sparsity not in ("topk", "batchtopk"):
        raise ConfigError(f"sae.sparsity must be topk or batchtopk, got {sae.sparsity!r}")
    if sae.train_on not in ("real", "real+generated"):
        raise ConfigError(f"sae.train_on must be 'real' or 'real+generated', got {sae.train_on!r}")
    stats = _dataclass_from(StatsSpec, raw.get("stats"), "stats")
    pairs = tuple(tuple(str(k) for k in pair) for pair in (stats.variant_pairs or ()))
    for pair in pairs:
        if len(pair) != 2 or any(k not in models for k in pair):
            raise ConfigError(
                f"stats.variant_pairs entry {list(pair)} must name two registered models "
                f"({sorted(models)})"
            )
    compare = _model_pairs("stats.compare", stats.compare, models)
    fail_on = parse_fail_on(stats.fail_on, "stats.fail_on")
    stats = StatsSpec(
        **{**stats.__dict__, "variant_pairs": pairs, "compare": compare, "fail_on": fail_on}
    )
    if not 0 < stats.suppressed_below < stats.exaggerated_above < 1:
        raise ConfigError("need 0 < stats.suppressed_below < stats.exaggerated_above < 1")
    if stats.temperature <= 0:
        raise ConfigError("stats.temperature must be > 0")
    _check_choice("stats.top_images_by", stats.top_images_by, ("patch_mean", "token_sum"))
    _check_choice("stats.cooccurrence_over", stats.cooccurrence_over, ("tokens", "images"))
    _check_choice("encoder.store_dtype", encoder.store_dtype, ("float16", "float32"))
    for name, least in (("verify_top", 0), ("verify_images", 1), ("verify_captions", 1)):
        value = getattr(stats, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"stats.{name} must be an integer ≥ {least}, got {value!r}")
    return RunConfig(
        name=str(raw["name"]),
        data_root=data_root,
        seed=int(raw.get("seed", 0)),
        real=real,
        models=models,
        encoder=encoder,
        sae=sae,
        stats=stats,
        source_path=source_path,
        scale=_dataclass_from(ScaleSpec, raw.get("scale"), "scale"),
        store_root=_store_root(raw.get("store_root"), base),
        images=_dataclass_from(ImagesSpec, raw.get("images"), "images"),
        labels=_dataclass_from(LabelsSpec, raw.get("labels"), "labels"),
    )


# Statuses of a concept between a base and a candidate generated set (stats/changes.py), and
# the kinds a status may be narrowed to in ``fail_on`` (new-suppressed, worsened-exaggerated).
CHANGE_STATUSES = (
    "new", "resolved", "worsened", "improved", "persisting", "borderline", "unchanged",
)  # fmt: skip
BLINDSPOT_KINDS = ("suppressed", "exaggerated")


def parse_fail_on(raw: object, where: str = "fail_on") -> tuple[str, ...]:
    """``fail_on`` as a tuple of tokens ``status`` or ``status-kind``; a list or a
    comma-separated string; anything else is a ConfigError naming ``where``."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items = [t.strip() for t in raw.split(",")]
    elif isinstance(raw, list | tuple):
        items = [str(t).strip() for t in raw]
    else:
        raise ConfigError(f"{where} must be a list or a comma-separated string, got {raw!r}")
    tokens = tuple(t for t in items if t)
    flaggable = [s for s in CHANGE_STATUSES if s != "unchanged"]
    allowed = [*flaggable, *(f"{s}-{k}" for s in flaggable for k in BLINDSPOT_KINDS)]
    bad = [t for t in tokens if t not in allowed]
    if bad:
        raise ConfigError(
            f"{where}: unknown token(s) {bad}; use a status {flaggable}, optionally with a "
            f"kind, e.g. new-suppressed"
        )
    return tokens


def _model_pairs(
    where: str, raw: object, models: dict[str, ModelSpec]
) -> tuple[tuple[str, str], ...]:
    """A list of [base, candidate] pairs of registered models (``stats.compare``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where} must be a list of [base, candidate] pairs, got {raw!r}")
    pairs = []
    for entry in raw:
        pair = tuple(str(k) for k in entry) if isinstance(entry, list | tuple) else (str(entry),)
        if len(pair) != 2 or any(k not in models for k in pair) or pair[0] == pair[1]:
            raise ConfigError(
                f"{where} entry {list(pair)} must name two different registered models "
                f"({sorted(models)})"
            )
        pairs.append((pair[0], pair[1]))
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"{where} lists a pair twice: {[list(p) for p in pairs]}")
    return tuple(pairs)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _store_root(raw: Any, base: Path) -> str | Path | None:
    """``store_root``: an fsspec URL stays a string; a local path resolves like data_root."""
    if raw is None:
        return None
    text = os.path.expandvars(str(raw))
    if "://" in text:
        return text.rstrip("/")
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: str | Path | None = None) -> RunConfig:
    """Load the run config at ``path``, else ``$BLINDSPOT_CONFIG``, else the embedded demo."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return parse_config(load_raw(chosen), chosen.resolve())


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A run config file as a mapping, with ``extends: other.yaml`` resolved: the other file
    (relative to this one) is read first and this file's mappings are merged into it, key by
    key (so ``models: {sd21: {dtype: float16}}`` changes one field of one model)."""
    if not path.exists():
        raise ConfigError(f"run config {path} does not exist (set {CONFIG_ENV} to a YAML file)")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"run config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw  # type: ignore[no-any-return]
    parent = (path.parent / str(raw.pop("extends"))).resolve()
    if parent in _seen or parent == path.resolve():
        raise ConfigError(f"run config {path}: 'extends' forms a cycle through {parent}")
    return _merged(load_raw(parent, (*_seen, path.resolve())), raw)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out

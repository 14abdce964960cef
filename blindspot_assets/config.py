"""The run configuration: one YAML file names the real source, the model registry, the encoder,
the SAE and the statistics. Loaded into frozen dataclasses; every mistake is reported with the
field that is wrong and how to fix it (``config_fields.py``).

The library's own configs are nested, not copied: ``sae`` holds ``RASAEConfig`` and
``TrainConfig`` (``sae/config.py``), ``stats`` holds ``BlindspotParams`` (``stats/params.py``);
each default and each check is written once, in the dataclass that owns the field."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from blindspot_assets.config_fields import (
    FLAT,
    ConfigError,
    build,
    check_fields,
    check_finite,
    check_ints,
    unknown_keys_error,
)
from blindspot_assets.store.layout import DataLayout, check_key

if TYPE_CHECKING:
    from blindspot_assets.sae.config import RASAEConfig, TrainConfig
    from blindspot_assets.stats.params import BlindspotParams

__all__ = ["ConfigError", "RunConfig", "load_config", "parse_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
CONFIG_ENV = "BLINDSPOT_CONFIG"

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    """demo | laion_parquet | img2dataset | folder (``sources/registry.py``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The source's own fields (checked by its module's ``validate``)."""


@dataclass(frozen=True)
class ModelSpec:
    key: str
    """The model's key in ``models:``, also its partition key."""
    family: str
    """demo | stable_diffusion | pixart | kandinsky | pregenerated | control."""
    params: dict[str, Any] = field(default_factory=dict)
    """The family's own fields (checked by its module's ``validate``)."""
    control: bool = False
    """A null control: a model known to have no blindspot (family ``control``, or a faithful
    re-render marked ``control: true``). Any concept flagged on it is a pipeline artefact."""
    images_per_caption: int = 1
    """Images generated per real caption, each with its own seed (sample s of image i: seed
    from (model, i, s); s = 0 is the seed of a set of one image per caption). The paired
    statistics use each caption's mean over its samples; k costs k × generation and k × feature
    extraction and encoding. Default: the run's ``images_per_caption`` (1, the paper's)."""


@dataclass(frozen=True)
class EncoderSpec:
    model_id: str = "facebook/dinov2-with-registers-base"
    """Hub id or local folder of the DINOv2 checkpoint."""
    revision: str = "main"
    """Branch, tag or commit (hub only)."""
    image_size: int = 224
    """Crop size; the resize side is round(image_size * 256 / 224)."""
    batch_size: int = 32
    """Images per encoder call."""
    dtype: Dtype = "auto"
    """Weights' dtype (auto: float16 on CUDA, float32 on CPU)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    decode_workers: int = 4
    """Threads decoding and preprocessing the next batches while the model runs (0: inline)."""
    store_dtype: Literal["float16", "float32"] = "float16"
    """dtype of the stored tokens: float16 halves the store; float32 keeps the encoder's output
    exactly, so a hard threshold on the SAE's pre-activations sees what the model computed."""
    init_random_tiny: bool = False
    """Demo only: save a seeded, randomly initialised tiny model at model_id if none is there."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_ints(self, 1, "image_size", "batch_size")
        check_ints(self, 0, "decode_workers")


@dataclass(frozen=True)
class ImagesSpec:
    """How every image, real or generated, reaches the encoder (``encoders/images.py``)."""

    codec: Literal["jpeg", "png", "as_stored"] = "jpeg"
    """jpeg: both sides re-encoded as JPEG at ``quality`` in memory before the encoder; png:
    lossless (only when both sides are lossless); as_stored: no pipeline at all (only to
    measure the file-format artefact)."""
    quality: int | Literal["match_real"] = 75
    """JPEG quality 1..95 (75 is PIL's default, what the paper's authors stored both sides at),
    or "match_real": the median quality estimated from the real set's JPEG files."""
    max_short_side: int | None = 512
    """Downscale (never upscale or crop) so the shorter side is at most this; null: keep size."""
    resample: Literal["lanczos", "bicubic"] = "lanczos"
    """Resampling filter of that downscale."""
    history: Literal["match_real", "none"] = "match_real"
    """match_real: each generated image first goes through the JPEG encode its paired real
    file went through (that file's quantisation tables, chroma subsampling and size; none for
    a real file stored losslessly); none: generated images get only the common pass."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.quality != "match_real" and not (
            isinstance(self.quality, int) and 1 <= self.quality <= 95
        ):
            raise ConfigError(
                f"quality must be an integer 1..95 or 'match_real', got {self.quality!r}"
            )
        if self.max_short_side is not None and (
            not isinstance(self.max_short_side, int) or self.max_short_side < 16
        ):
            raise ConfigError(
                f"max_short_side must be an integer ≥ 16 or null, got {self.max_short_side!r}"
            )


def _sae_model() -> RASAEConfig:
    # imported when used: the sae package imports torch and modules that import this one
    from blindspot_assets.sae.config import RASAEConfig

    return RASAEConfig()


def _sae_train() -> TrainConfig:
    from blindspot_assets.sae.config import TrainConfig

    return TrainConfig()


def _blindspot_params() -> BlindspotParams:
    from blindspot_assets.stats.params import BlindspotParams

    return BlindspotParams()


@dataclass(frozen=True)
class SAESpec:
    """The ``sae`` block. Its YAML keys are the fields below and those of the two nested
    library configs (``sae/config.py``), written flat: ``sae: {k: 32, lr: 5e-4}``."""

    model: RASAEConfig = field(default_factory=_sae_model, metadata=FLAT)
    """The model (n_concepts, sparsity, k, n_candidates, delta_relax, ...); its width d is the
    encoder's, set when training starts (``model.sized(d)``)."""
    train: TrainConfig = field(default_factory=_sae_train, metadata=FLAT)
    """The training run (epochs, batch_size, lr, seed, max_tokens, device, ...)."""
    train_on: Literal["real", "real+generated"] = "real"
    """Tokens the SAE is trained on: the real images', or the real and every model's."""
    k_max_store: int = 64
    """How many active concepts per token the code store keeps."""
    pretrained: str | None = None
    """A converted checkpoint folder, or a released .pt/.pth to import (relative to the config
    file); null: train one."""
    replicate_seed: int | None = None
    """Train a second SAE with this seed (same data and config) and mark in ``blindspots``
    which flagged concepts replicate in it (``stats/replication.py``); null: off."""
    threshold: float | None = None
    """θ of a released BatchTopK checkpoint (codes below θ are zero). Taken first; then θ from
    a config.json beside the .pth; then the pickled running_threshold. None known: an error."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_ints(self, 1, "k_max_store")
        if self.threshold is not None:
            check_finite("threshold", self.threshold)
            if not self.pretrained:
                raise ConfigError(
                    "threshold applies to a released checkpoint: set sae.pretrained, or remove "
                    "sae.threshold"
                )


# Statuses of a concept between a base and a candidate generated set (stats/changes.py), and
# the kinds a status may be narrowed to in ``fail_on`` (new-suppressed, worsened-exaggerated).
CHANGE_STATUSES = (
    "new", "resolved", "worsened", "improved", "persisting", "borderline", "unchanged",
)  # fmt: skip
BLINDSPOT_KINDS = ("suppressed", "exaggerated")

ModelPairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class StatsSpec:
    """The ``stats`` block. Its YAML keys are the fields below and those of the nested
    ``BlindspotParams`` (``stats/params.py``: temperature, thresholds, alpha, ...), flat."""

    params: BlindspotParams = field(default_factory=_blindspot_params, metadata=FLAT)
    """What the blindspot statistics need besides the data."""
    variant_pairs: ModelPairs = ()
    """Model pairs compared as a model and its variant (e.g. [sd15, sd15-dpo]) on ‖ξ(x')−ξ(x)‖."""
    memorization_quantile: float = 0.001
    """False-candidate rate per generated image: the quantile of the real images' own local
    ratio (leave-one-out) below which a generated image is a memorisation candidate."""
    top_datapoint_concepts: int = 5
    """Concepts listed per image in ``datapoint_deltas``."""
    label_terms: int = 5
    """Caption terms kept per concept label."""
    top_images_by: Literal["patch_mean", "token_sum"] = "token_sum"
    """How a concept's top images are ranked: patch_mean = mean of z[t, k] over the patch
    tokens (the paper's authors), token_sum = ξ_k, the sum over every token."""
    cooccurrence_over: Literal["tokens", "images"] = "tokens"
    """Concept co-occurrence (ZᵀZ): over token codes or per-image energies."""
    cooccurrence_top: int = 10
    """Co-occurring partners kept per concept."""
    cooccurrence_block: int = 2048
    """Concepts per pass (memory: cooccurrence_block × n_concepts float64)."""
    verify_top: int = 3
    """Confirm flagged blindspots (``blindspot_verification``): the top ``verify_top``
    significant concepts of each kind (0: off); at most 2 × top × captions × images
    generations per model."""
    verify_images: int = 4
    """New images per caption in the verification."""
    verify_captions: int = 8
    """Captions per verified concept."""
    compare: ModelPairs = ()
    """Blindspot changes between two generated sets of the same real images (base, candidate),
    e.g. [sd15, sd15-dpo] or [demo-a, demo-a-v2] (table blindspot_changes, the gate CLI)."""
    fail_on: tuple[str, ...] = ("new-suppressed", "new-exaggerated", "worsened")
    """Which changes are regressions: a status (new, resolved, worsened, improved, persisting,
    borderline), optionally with a kind (new-suppressed); a list or a comma-separated string."""
    prdc_k: int = 5
    """k of the k-nearest-neighbour radii of precision, recall, density and coverage
    (``stats/distribution.py``, docs/method.md §9)."""
    distribution_bootstrap: int = 50
    """Bootstrap resamples of the distribution metrics' intervals (0: none). Each costs one FD
    (two d × d covariances and an eigendecomposition) and one pass of the PRDC counts."""
    distribution_max_samples: int = 10_000
    """At most this many captions per distribution metric: above it, a seeded sample of them,
    each with every valid generated sample (``n_captions``, ``n_real`` / ``n_generated``
    record the sizes used). PRDC's distances are computed in blocks of ``block_rows`` rows
    against the whole sample."""
    probe_images: int = 400
    """Real images in the nuisance probe (``nuisance_probe``, ``stats/nuisance.py``): the null
    control that sees processing asymmetry (0: off)."""
    probe_scale: float = 0.5
    """The probe's history arm: each real image downscaled by this factor is its "fresh"
    content, and the real file's JPEG encode of that content its real side."""
    probe_blur: float = 0.7
    """The probe's style arm: the radius of a Gaussian blur (a mild global style), in pixels
    at a shorter side of 512, scaled to each image."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_ints(self, 0, "verify_top", "probe_images", "distribution_bootstrap")
        check_ints(self, 1, "prdc_k", "distribution_max_samples")
        if not (0.0 < self.probe_scale <= 1.0) or self.probe_blur < 0:
            raise ConfigError(
                f"probe_scale must be in (0, 1] and probe_blur ≥ 0, got {self.probe_scale}, "
                f"{self.probe_blur}"
            )
        check_ints(self, 1, "verify_images", "verify_captions", "top_datapoint_concepts")
        check_ints(self, 1, "label_terms", "cooccurrence_top", "cooccurrence_block")
        # lists from YAML become tuples: a frozen config stays hashable
        object.__setattr__(self, "variant_pairs", _pairs("variant_pairs", self.variant_pairs))
        object.__setattr__(self, "compare", _pairs("compare", self.compare, distinct=True))
        object.__setattr__(self, "fail_on", parse_fail_on(self.fail_on))

    def check_models(self, models: Mapping[str, object]) -> None:
        """Every pair names registered models (the one check that needs the registry)."""
        for name in ("variant_pairs", "compare"):
            for pair in getattr(self, name):
                if any(k not in models for k in pair):
                    raise ConfigError(
                        f"stats.{name} entry {list(pair)} must name registered models "
                        f"({sorted(models)}): register them under 'models:' or fix the key"
                    )


@dataclass(frozen=True)
class ScaleSpec:
    shards: int = 1
    """Workers that each dataset's per-image stages (generation, features, concept codes) fan
    out over: one Dagster step per shard, all writing one store."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_ints(self, 1, "shards")


@dataclass(frozen=True)
class LabelsSpec:
    """Concept names from a vision-language / captioning model (``labels/``); off by default."""

    model_id: str = "none"
    """A transformers image-text-to-text checkpoint (hub id or local folder); "none": off."""
    revision: str = "main"
    """Branch, tag or commit (hub only)."""
    prompt: str | None = None
    """null: "a picture of" for a captioning model (a caption prefix), else an instruction."""
    max_new_tokens: int = 20
    """Tokens generated per caption."""
    images_per_concept: int = 5
    """Top real images captioned per concept."""
    concepts: int = 32
    """How many concepts are named: the flagged ones first."""
    crop: bool = True
    """Crop each image to the concept's patches (the report's heat maps)."""
    image_px: int = 384
    """Side of the square each image (or crop) is resized to."""
    name_words: int = 3
    """At most this many words in a name."""
    batch_size: int = 8
    """Images per model call."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    dtype: Dtype = "auto"
    """Weights' dtype (auto: float16 on CUDA, float32 on CPU)."""

    def __post_init__(self) -> None:
        check_fields(self)
        counts = ("max_new_tokens", "images_per_concept", "concepts", "image_px", "name_words")
        check_ints(self, 1, *counts, "batch_size")

    @property
    def enabled(self) -> bool:
        return str(self.model_id).strip().lower() not in ("", "none", "null")


@dataclass(frozen=True)
class RunConfig:
    """One run: a YAML file's blocks, each its own frozen dataclass."""

    name: str
    """The run's name (the report's title, the SAE header's ``run_config``)."""
    data_root: Path
    """Images, the SAE, the DuckDB file and the report (relative to the config file)."""
    seed: int
    """Base seed of every random choice of the run (sources, generation)."""
    real: SourceSpec
    """Where the real images come from."""
    models: dict[str, ModelSpec]
    """The model registry: one partition per key."""
    encoder: EncoderSpec
    """The DINOv2 encoder."""
    sae: SAESpec
    """The relaxed archetypal SAE: its model, its training run, or a released checkpoint."""
    stats: StatsSpec
    """The statistics."""
    source_path: Path | None = None
    """The file the config was read from (None: built in memory)."""
    scale: ScaleSpec = field(default_factory=ScaleSpec)
    """How the per-image stages fan out."""
    store_root: str | Path | None = None
    """Zarr stores and Parquet tables: under data_root unless a path or fsspec URL is given."""
    images: ImagesSpec = field(default_factory=ImagesSpec)
    """How every image reaches the encoder."""
    labels: LabelsSpec = field(default_factory=LabelsSpec)
    """Concept names from a vision-language model (off by default)."""
    images_per_caption: int = 1
    """Images each model generates per real caption unless its entry sets its own (1: the
    paper's; see ``ModelSpec.images_per_caption``)."""

    @property
    def controls(self) -> list[str]:
        """The model keys that are null controls, in registry order."""
        return [k for k, m in self.models.items() if m.control]

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_root, self.store_root)

    def __post_init__(self) -> None:
        self.stats.check_models(self.models)

    def model(self, key: str) -> ModelSpec:
        if key not in self.models:
            raise ConfigError(
                f"unknown model {key!r}: the run config {self.source_path} registers "
                f"{sorted(self.models)}; add an entry under 'models:' or pick one of those"
            )
        return self.models[key]


TOP_LEVEL = (
    "name", "data_root", "store_root", "seed", "real", "models", "encoder", "sae", "stats",
    "scale", "images", "labels", "images_per_caption",
)  # fmt: skip


def parse_config(raw: dict[str, Any], source_path: Path | None = None) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("a run config must be a YAML mapping")
    base = source_path.parent if source_path else Path.cwd()
    for required in ("name", "data_root", "real", "models"):
        if required not in raw:
            raise ConfigError(f"run config {source_path} lacks the required field '{required}'")
    extra = sorted(set(raw) - set(TOP_LEVEL))
    if extra:
        raise unknown_keys_error(extra, TOP_LEVEL, None)
    data_root = _local_path(str(raw["data_root"]), base)
    per_caption = _images_per_caption(raw.get("images_per_caption", 1), "images_per_caption")
    return RunConfig(
        name=str(raw["name"]),
        data_root=data_root,
        seed=int(raw.get("seed", 0)),
        real=_source(raw["real"]),
        models=_models(raw["models"], data_root, per_caption),
        encoder=_encoder(build(EncoderSpec, raw.get("encoder"), "encoder"), base),
        sae=_sae(build(SAESpec, raw.get("sae"), "sae"), base),
        stats=build(StatsSpec, raw.get("stats"), "stats"),
        source_path=source_path,
        scale=build(ScaleSpec, raw.get("scale"), "scale"),
        store_root=_store_root(raw.get("store_root"), base),
        images=build(ImagesSpec, raw.get("images"), "images"),
        labels=build(LabelsSpec, raw.get("labels"), "labels"),
        images_per_caption=per_caption,
    )


def _images_per_caption(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a whole number of at least 1, got {value!r}")
    return value


def _local_path(text: str, base: Path) -> Path:
    """A path of the config file: $VARS and ~ expanded, relative to the file's folder."""
    path = Path(os.path.expandvars(text)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _source(raw: object) -> SourceSpec:
    real = dict(raw or {}) if isinstance(raw, Mapping | None) else None
    if real is None or "kind" not in real:
        raise ConfigError("'real.kind' is required: demo | laion_parquet | img2dataset | folder")
    return SourceSpec(kind=str(real.pop("kind")), params=real)


def _models(raw: object, data_root: Path, images_per_caption: int = 1) -> dict[str, ModelSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("'models' must map at least one model key to its entry")
    models: dict[str, ModelSpec] = {}
    for key, entry in raw.items():
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
        per_caption = _images_per_caption(
            entry.pop("images_per_caption", images_per_caption), f"models.{key}.images_per_caption"
        )
        models[str(key)] = ModelSpec(str(key), family, entry, control, per_caption)
    return models


def _encoder(encoder: EncoderSpec, base: Path) -> EncoderSpec:
    # a local folder (the demo's, or one written as "./…" / "../…") is relative to this file;
    # a hub id never starts with a dot
    local = encoder.init_random_tiny or encoder.model_id.startswith(("./", "../"))
    if local and not Path(encoder.model_id).is_absolute():
        return replace(encoder, model_id=str((base / encoder.model_id).resolve()))
    return encoder


def _sae(sae: SAESpec, base: Path) -> SAESpec:
    if sae.pretrained:  # relative to the config file, like data_root
        return replace(sae, pretrained=str(_local_path(str(sae.pretrained), base)))
    return sae


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
            f"{where} has unknown token(s) {bad}; use a status {flaggable}, optionally with a "
            f"kind, e.g. new-suppressed"
        )
    return tokens


def _pairs(where: str, raw: object, distinct: bool = False) -> ModelPairs:
    """A list of [base, candidate] model keys as a tuple of pairs (``stats.compare``: two
    different models, no pair twice)."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where} must be a list of [base, candidate] pairs, got {raw!r}")
    pairs = []
    for entry in raw:
        pair = tuple(str(k) for k in entry) if isinstance(entry, list | tuple) else (str(entry),)
        if len(pair) != 2 or (distinct and pair[0] == pair[1]):
            raise ConfigError(
                f"{where} entry {list(pair)} must name two {'different ' if distinct else ''}"
                "registered models, e.g. [sd15, sd15-dpo]"
            )
        pairs.append((pair[0], pair[1]))
    if distinct and len(set(pairs)) != len(pairs):
        raise ConfigError(f"{where} lists a pair twice: {[list(p) for p in pairs]}")
    return tuple(pairs)


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

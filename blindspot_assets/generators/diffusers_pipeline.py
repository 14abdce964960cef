"""What the diffusers families share: their settings, device and dtype choice, the scheduler swap,
per-image seeding and the lineage record.

Settings a user writes under ``models.<key>`` (every family below takes these):

    repo:         hub id or local directory (a path: absolute, ./ ../ ~, or an existing folder)
    revision:     branch, tag or commit (hub only; default main)
    dtype:        auto | float16 | bfloat16 | float32   (auto: float16 on CUDA, float32 on CPU)
    variant:      weight-file variant, e.g. fp16 (optional)
    scheduler:    a diffusers scheduler class name, e.g. DPMSolverMultistepScheduler (null: the
                  pipeline's own)
    scheduler_config: overrides passed to that scheduler's from_config (optional)
    steps, guidance: null = the pipeline's default; the value used is recorded either way
    height, width: default 512
    batch_size:   prompts per pipeline call (default 8)
    seed:         base seed of derive_seed(model key, image id, seed) (default: the run seed)
    negative_prompt: optional
    noise_device: cpu | device. Where each image's torch.Generator lives (default cpu: the
                  initial noise then does not depend on the GPU kind)
    device:       auto | cuda | cuda:N | cpu (default auto)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import (
    CheckpointVersion,
    MissingInput,
    combined_data_version,
    is_hub_id,
    library_versions,
    looks_local,
)
from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.devices import choose_device
from blindspot_assets.generators.base import GenerationRequest, check_family_fields

COMMON_PARAMS = frozenset(
    {
        "repo",
        "revision",
        "dtype",
        "variant",
        "scheduler",
        "scheduler_config",
        "steps",
        "guidance",
        "height",
        "width",
        "batch_size",
        "seed",
        "negative_prompt",
        "noise_device",
        "device",
    }
)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def fail(
    spec: ModelSpec, field_name: str, problem: str, fix: str, missing: bool = False
) -> ConfigError:
    """The error naming the field and the fix; ``missing``: the entry may be right, but what it
    names is not on this machine (``MissingInput``)."""
    cls = MissingInput if missing else ConfigError
    return cls(f"models.{spec.key}.{field_name}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class DiffusionSettings:
    repo: str
    revision: str = "main"
    dtype: str = "auto"
    variant: str | None = None
    scheduler: str | None = None
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    guidance: float | None = None
    height: int = 512
    width: int = 512
    batch_size: int = 8
    seed: int = 0
    negative_prompt: str | None = None
    noise_device: str = "cpu"
    device: str = "auto"


def check_params(spec: ModelSpec, family_params: Mapping[str, str]) -> None:
    """Reject keys this family does not know, naming the nearest and the known ones."""
    check_family_fields(spec, COMMON_PARAMS | set(family_params))


def check_repo(spec: ModelSpec, field_name: str, repo: Any, must_hold: str | None) -> str:
    """A hub id, or a local directory that exists and holds ``must_hold`` (a file under it)."""
    if not isinstance(repo, str) or not repo.strip():
        raise fail(
            spec,
            field_name,
            "missing or not a string",
            "give a hub id (org/name) or a local directory",
        )
    if looks_local(repo):
        path = Path(repo).expanduser()
        if not path.is_dir():
            raise fail(
                spec,
                field_name,
                f"local path {path} does not exist",
                "download the checkpoint there (hf download REPO "
                "--local-dir PATH) or give its hub id",
                missing=True,
            )
        if must_hold and not (path / must_hold).is_file():
            raise fail(
                spec,
                field_name,
                f"{path} has no {must_hold}",
                "point it at a diffusers checkpoint folder (save_pretrained layout)",
            )
    elif not is_hub_id(repo):
        raise fail(
            spec,
            field_name,
            f"{repo!r} is neither a hub id nor an existing directory",
            "give org/name, or a path starting with / or ./",
        )
    return repo


def settings_from(spec: ModelSpec) -> DiffusionSettings:
    """Validate and type the common fields (family fields are left in ``spec.params``)."""
    p = spec.params
    repo = check_repo(spec, "repo", p.get("repo"), "model_index.json")
    dtype = str(p.get("dtype", "auto"))
    if dtype not in ("auto", *DTYPES):
        raise fail(
            spec, "dtype", f"{dtype!r} is not a dtype", f"use one of auto, {', '.join(DTYPES)}"
        )
    scheduler = p.get("scheduler")
    if scheduler is not None:
        scheduler_class(spec, str(scheduler))
    sched_cfg = p.get("scheduler_config") or {}
    if not isinstance(sched_cfg, dict):
        raise fail(spec, "scheduler_config", "must be a mapping", "write key: value pairs")
    noise_device = str(p.get("noise_device", "cpu"))
    if noise_device not in ("cpu", "device"):
        raise fail(spec, "noise_device", f"{noise_device!r}", "use cpu or device")

    def positive_int(name: str, default: int | None) -> int | None:
        value = p.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(spec, name, f"{value!r} is not a positive integer", f"set {name}: 50, say")
        return value

    height, width = positive_int("height", 512), positive_int("width", 512)
    for name, size in (("height", height), ("width", width)):
        if size is not None and size % 8:
            raise fail(spec, name, f"{size} is not a multiple of 8", "use 512, 768, 1024...")
    guidance = p.get("guidance")
    if guidance is not None and (
        isinstance(guidance, bool) or not isinstance(guidance, int | float)
    ):
        raise fail(spec, "guidance", f"{guidance!r} is not a number", "set guidance: 7.5, say")
    seed = p.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail(spec, "seed", f"{seed!r} is not an integer", "set seed: 0")
    return DiffusionSettings(
        repo=repo,
        revision=str(p.get("revision") or "main"),
        dtype=dtype,
        variant=p.get("variant"),
        scheduler=str(scheduler) if scheduler is not None else None,
        scheduler_config=dict(sched_cfg),
        steps=positive_int("steps", None),
        guidance=float(guidance) if guidance is not None else None,
        height=height or 512,
        width=width or 512,
        batch_size=positive_int("batch_size", 8) or 8,
        seed=seed,
        negative_prompt=p.get("negative_prompt"),
        noise_device=noise_device,
        device=str(p.get("device", "auto")),
    )


def scheduler_class(spec: ModelSpec, name: str) -> type:
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise fail(
            spec,
            "scheduler",
            f"{name!r} is not a diffusers scheduler class",
            "use a class name such as DDIMScheduler, EulerDiscreteScheduler, "
            "DPMSolverMultistepScheduler, or null for the pipeline's own",
        )
    return cls


def choose_dtype(requested: str, device: str) -> tuple[torch.dtype, str]:
    """(dtype, note). ``auto`` is float16 on CUDA (as the paper ran SD 1.5) and float32 on the
    CPU; half precision asked for on a CPU is run in float32 and the note says so."""
    on_cuda = device.startswith("cuda")
    if requested == "auto":
        return (torch.float16 if on_cuda else torch.float32), ""
    if requested == "float16" and not on_cuda:
        return torch.float32, "float16 asked for on a CPU: ran in float32"
    return DTYPES[requested], ""


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: torch.dtype
    dtype_note: str = ""


def runtime_for(settings: DiffusionSettings, device: str | None) -> Runtime:
    """The build() argument wins over the entry's ``device`` field."""
    dev = choose_device(device or settings.device)
    dtype, note = choose_dtype(settings.dtype, dev)
    return Runtime(dev, dtype, note)


def hub_kwargs(repo: str, revision: str, variant: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if not looks_local(repo):
        kwargs["revision"] = revision
    if variant:
        kwargs["variant"] = variant
    return kwargs


def load_pipeline(
    cls: Any, repo: str, revision: str, variant: str | None, runtime: Runtime, **kwargs: Any
) -> Any:
    """``cls.from_pretrained`` by hub id or path, moved to the device, progress bars off."""
    kwargs.update(hub_kwargs(repo, revision, variant))
    pipe = cls.from_pretrained(repo, dtype=runtime.dtype, **kwargs).to(runtime.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_kwargs(
    settings: DiffusionSettings,
    steps: int,
    guidance: float,
    n_prompts: int,
    no_negative: Any = None,
) -> dict[str, Any]:
    """The pipeline-call arguments every family shares. ``no_negative`` is what a family's
    pipeline takes for 'no negative prompt' (None for most; PixArt wants "")."""
    negative = settings.negative_prompt
    return {
        "negative_prompt": [negative] * n_prompts if negative else no_negative,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": settings.height,
        "width": settings.width,
    }


def steps_and_guidance(settings: DiffusionSettings, pipe: Any) -> tuple[int, float]:
    """The entry's values, else the pipeline's defaults (recorded either way)."""
    steps = settings.steps or call_default(pipe, "num_inference_steps")
    guidance = settings.guidance
    return steps, guidance if guidance is not None else call_default(pipe, "guidance_scale")


def swap_scheduler(pipe: Any, settings: DiffusionSettings, spec: ModelSpec) -> None:
    if settings.scheduler is None and not settings.scheduler_config:
        return
    cls: Any = type(pipe.scheduler)
    if settings.scheduler:
        cls = scheduler_class(spec, settings.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **settings.scheduler_config)


def call_default(pipe: Any, name: str) -> Any:
    """The default of a pipeline `__call__` argument (the paper's "library defaults")."""
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def jsonable(value: Any) -> Any:
    """Scheduler configs hold tuples, numpy scalars and FrozenDicts: make them plain JSON."""
    return json.loads(
        json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    )


PipelineCall = Callable[[list[str], list[torch.Generator]], list[Image.Image]]


def _nth(value: Any, i: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value[i])


class PromptLog:
    """What a family's pipeline received as ``prompt`` and ``negative_prompt``, per image.

    Families call their pipelines through :meth:`call`; the first call of a batch that takes a
    prompt (the text-conditioned stage: the pipeline itself, or Kandinsky's prior) is recorded,
    and :class:`DiffusersGenerator` puts it on each image (``image.info``), so the record is
    what reached the pipeline, not what was meant to.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[str | None, str | None]] = []

    def call(self, pipe: Any, **kwargs: Any) -> Any:
        if "prompt" in kwargs and not self.sent:
            prompt, negative = kwargs["prompt"], kwargs.get("negative_prompt")
            n = 1 if isinstance(prompt, str) else len(prompt)
            self.sent = [(_nth(prompt, i), _nth(negative, i)) for i in range(n)]
        return pipe(**kwargs)


class DiffusersGenerator:
    """A loaded pipeline behind the ``ImageGenerator`` protocol.

    Every image gets its own ``torch.Generator`` seeded with the request's seed, so an image made
    alone and the same image made inside any batch start from the same noise."""

    def __init__(
        self,
        pipe: Any,
        spec: ModelSpec,
        settings: DiffusionSettings,
        runtime: Runtime,
        call: PipelineCall,
        checkpoints: list[CheckpointVersion],
        steps: int,
        guidance: float,
        extra: dict[str, Any],
        prompts: PromptLog,
    ) -> None:
        """``pipe``: the loaded pipeline (its class and scheduler are recorded); ``call``: how
        a batch of prompts becomes images; ``extra``: the family's own lineage fields."""
        scheduler = pipe.scheduler
        self.spec = spec
        self._prompts = prompts
        self.settings = settings
        self.device = runtime.device
        self.dtype = runtime.dtype
        self._call = call
        self._checkpoints = checkpoints
        self._lineage = {
            "family": spec.family,
            "model_key": spec.key,
            "repo": settings.repo,
            "revision": settings.revision,
            "version": combined_data_version(checkpoints),
            "checkpoints": [c.as_dict() for c in checkpoints],
            "pipeline_class": type(pipe).__name__,
            "scheduler_class": type(scheduler).__name__,
            "scheduler_config": jsonable(dict(scheduler.config)),
            "steps": steps,
            "guidance": guidance,
            "height": settings.height,
            "width": settings.width,
            "negative_prompt": settings.negative_prompt,
            "prompt_policy": "the real image's caption, unchanged; what reached the pipeline "
            "is in each image's manifest row (prompt, negative_prompt) and PNG text",
            "dtype": str(runtime.dtype).removeprefix("torch."),
            "dtype_requested": settings.dtype,
            "dtype_note": runtime.dtype_note,
            "device": runtime.device,
            "noise_device": settings.noise_device,
            "seed_policy": "torch.Generator(noise_device).manual_seed(derive_seed(model_key, "
            "image_id, seed)), one generator per image",
            "seed": settings.seed,
            "libraries": library_versions(),
            **extra,
        }

    @property
    def checkpoints(self) -> list[CheckpointVersion]:
        return list(self._checkpoints)

    def lineage(self) -> dict[str, Any]:
        return dict(self._lineage)

    def _generator(self, seed: int) -> torch.Generator:
        where = "cpu" if self.settings.noise_device == "cpu" else self.device
        return torch.Generator(where).manual_seed(seed)

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        images: list[Image.Image] = []
        size = self.settings.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            self._prompts.sent = []
            out = self._call([r.caption for r in chunk], [self._generator(r.seed) for r in chunk])
            if len(out) != len(chunk):
                raise RuntimeError(f"pipeline returned {len(out)} images for {len(chunk)} prompts")
            sent = self._prompts.sent
            if len(sent) != len(chunk):
                raise RuntimeError(
                    f"{self.spec.family}: {len(sent)} prompts reached the pipeline for "
                    f"{len(chunk)} images (a pipeline called around the PromptLog?)"
                )
            for im, (prompt, negative) in zip(out, sent, strict=True):
                rgb = im.convert("RGB")
                rgb.info.update({"prompt": prompt, "negative_prompt": negative})
                images.append(rgb)
        return images

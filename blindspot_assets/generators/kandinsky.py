"""Kandinsky 2.1 and 2.2: a CLIP-image-embedding prior, then a MoVQ decoder.

Family ``kandinsky``. Two ways to name the checkpoints:

- ``repo`` alone: ``AutoPipelineForText2Image.from_pretrained(repo)`` (how the paper loaded
  ``kandinsky-community/kandinsky-2-1``). From the hub it joins the prior named in the decoder's
  model card; a local ``repo`` must hold both (a saved ``Kandinsky*CombinedPipeline``).
- ``repo`` (decoder) + ``prior_repo``: the prior pipeline and the decoder pipeline loaded apart
  and run one after the other, the same calls the combined pipeline makes.

Fields beyond the common ones (``generators/diffusers_pipeline.py``; ``steps``/``guidance`` are the
decoder's):

    prior_repo, prior_revision: the prior checkpoint (two-stage form only)
    prior_steps:    prior denoising steps (null: the library default, 25)
    prior_guidance: prior classifier-free guidance (null: the library default, 4.0)

Every image's generator serves the prior first and then the decoder, as in the combined pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion, resolve_checkpoint
from blindspot_assets.config import ModelSpec
from blindspot_assets.generators import diffusers_pipeline as pipeline

FAMILY_PARAMS = {
    "prior_repo": "the prior checkpoint; given, prior and decoder load apart",
    "prior_revision": "revision of prior_repo (default main)",
    "prior_steps": "prior denoising steps (default: the library's, 25)",
    "prior_guidance": "prior guidance scale (default: the library's, 4.0)",
}
_DECODERS = {"KandinskyPipeline": "2.1", "KandinskyV22Pipeline": "2.2"}
_PRIORS = {"KandinskyPriorPipeline": "2.1", "KandinskyV22PriorPipeline": "2.2"}
_COMBINED = {"KandinskyCombinedPipeline": "2.1", "KandinskyV22CombinedPipeline": "2.2"}
_SNAPSHOT_RE = re.compile(r"models--(?P<repo>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})")


def _prior(spec: ModelSpec) -> tuple[str, str] | None:
    repo = spec.params.get("prior_repo")
    if repo is None:
        return None
    pipeline.check_repo(spec, "prior_repo", repo, "model_index.json")
    return str(repo), str(spec.params.get("prior_revision") or "main")


def validate(spec: ModelSpec) -> None:
    pipeline.check_params(spec, FAMILY_PARAMS)
    pipeline.settings_from(spec)
    if "prior_revision" in spec.params and "prior_repo" not in spec.params:
        raise pipeline.fail(
            spec, "prior_revision", "given without prior_repo", "add prior_repo or drop it"
        )
    _prior(spec)
    steps = spec.params.get("prior_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise pipeline.fail(
            spec, "prior_steps", f"{steps!r} is not a positive integer", "set prior_steps: 25"
        )
    guidance = spec.params.get("prior_guidance")
    if guidance is not None and (
        isinstance(guidance, bool) or not isinstance(guidance, int | float)
    ):
        raise pipeline.fail(
            spec, "prior_guidance", f"{guidance!r} is not a number", "set prior_guidance: 4.0"
        )


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    settings = pipeline.settings_from(spec)
    found = [resolve_checkpoint(settings.repo, settings.revision)]
    prior = _prior(spec)
    if prior:
        found.append(resolve_checkpoint(*prior))
    return found


def _connected_prior(pipe: Any) -> CheckpointVersion | None:
    """The prior the hub's AutoPipeline joined in: its cache path names repo and commit."""
    source = str(getattr(pipe.prior_prior.config, "_name_or_path", "") or "")
    match = _SNAPSHOT_RE.search(Path(source).as_posix())
    if not match:
        return None
    repo = match["repo"].replace("--", "/", 1)
    return CheckpointVersion(
        repo, None, match["commit"], "hub_cache", None, "joined by AutoPipeline"
    )


def _pick(explicit: float | int | None, pipe: Any, name: str) -> Any:
    return explicit if explicit is not None else pipeline.call_default(pipe, name)


def _stage_info(
    spec: ModelSpec,
    settings: pipeline.DiffusionSettings,
    decoder: Any,
    prior: Any,
    prior_prefix: str,
) -> dict[str, Any]:
    """Steps and guidance of both stages: the entry's, else each call's library default."""
    steps, guidance = pipeline.steps_and_guidance(settings, decoder)
    return {
        "steps": steps,
        "guidance": guidance,
        "prior_steps": _pick(
            spec.params.get("prior_steps"), prior, f"{prior_prefix}num_inference_steps"
        ),
        "prior_guidance": _pick(
            spec.params.get("prior_guidance"), prior, f"{prior_prefix}guidance_scale"
        ),
    }


Built = tuple[Any, pipeline.PipelineCall, dict[str, Any], pipeline.PromptLog]


def _copy(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


def _build_combined(
    spec: ModelSpec, settings: pipeline.DiffusionSettings, runtime: pipeline.Runtime
) -> Built:
    from diffusers import AutoPipelineForText2Image

    pipe = pipeline.load_pipeline(
        AutoPipelineForText2Image, settings.repo, settings.revision, settings.variant, runtime
    )
    name = type(pipe).__name__
    if name not in _COMBINED:
        raise pipeline.fail(
            spec,
            "repo",
            f"loads as {name}, not a Kandinsky 2.1/2.2 pipeline",
            "point repo at a Kandinsky decoder (e.g. kandinsky-community/kandinsky-2-1)",
        )
    if settings.negative_prompt:
        raise pipeline.fail(
            spec,
            "negative_prompt",
            "the combined Kandinsky pipeline doubles the prior's batch for a negative prompt, "
            "which per-image generators cannot follow",
            "give prior_repo (the prior and the decoder then run as two stages), or drop it",
        )
    pipeline.swap_scheduler(pipe, settings, spec)
    info = _stage_info(spec, settings, pipe, pipe, "prior_") | {
        "version": _COMBINED[name],
        "mode": "auto_pipeline",
        "prior_scheduler_class": type(pipe.prior_scheduler).__name__,
    }
    log = pipeline.PromptLog()

    def call(prompts: list[str], generators: list[torch.Generator]) -> list[Image.Image]:
        out = log.call(
            pipe,
            prompt=prompts,
            prior_num_inference_steps=info["prior_steps"],
            prior_guidance_scale=info["prior_guidance"],
            generator=generators,
            output_type="pil",
            **pipeline.sampling_kwargs(settings, info["steps"], info["guidance"], len(prompts)),
        )
        return list(out.images)

    return pipe, call, info, log


def _build_two_stage(
    spec: ModelSpec,
    settings: pipeline.DiffusionSettings,
    runtime: pipeline.Runtime,
    prior_ref: tuple[str, str],
) -> Built:
    from diffusers import DiffusionPipeline

    decoder = pipeline.load_pipeline(
        DiffusionPipeline, settings.repo, settings.revision, settings.variant, runtime
    )
    prior = pipeline.load_pipeline(DiffusionPipeline, *prior_ref, settings.variant, runtime)
    d_name, p_name = type(decoder).__name__, type(prior).__name__
    if d_name not in _DECODERS:
        raise pipeline.fail(
            spec,
            "repo",
            f"loads as {d_name}, not a Kandinsky decoder",
            "use a kandinsky-2-1 or kandinsky-2-2-decoder checkpoint",
        )
    if _PRIORS.get(p_name) != _DECODERS[d_name]:
        raise pipeline.fail(
            spec,
            "prior_repo",
            f"loads as {p_name}, which does not pair with {d_name}",
            f"use the Kandinsky {_DECODERS[d_name]} prior",
        )
    pipeline.swap_scheduler(decoder, settings, spec)
    info = _stage_info(spec, settings, decoder, prior, "") | {
        "version": _DECODERS[d_name],
        "mode": "prior+decoder",
        "prior_pipeline_class": p_name,
        "prior_scheduler_class": type(prior.scheduler).__name__,
    }
    takes_prompt = _DECODERS[d_name] == "2.1"  # the 2.1 decoder also reads the text (M-CLIP)
    log = pipeline.PromptLog()

    def call(prompts: list[str], generators: list[torch.Generator]) -> list[Image.Image]:
        shared = pipeline.sampling_kwargs(settings, info["steps"], info["guidance"], len(prompts))
        prior_generators = generators
        if shared["negative_prompt"] is not None:
            # the prior appends the negative prompts to its batch: each image's negative
            # embedding gets a copy of that image's generator, so it is still made per image
            prior_generators = generators + [_copy(g) for g in generators]
        embeds = log.call(
            prior,
            prompt=prompts,
            negative_prompt=shared["negative_prompt"],
            num_inference_steps=info["prior_steps"],
            guidance_scale=info["prior_guidance"],
            generator=prior_generators,
            output_type="pt",
        )
        if takes_prompt:
            shared["prompt"] = prompts
        else:
            del shared["negative_prompt"]
        out = decoder(
            image_embeds=embeds.image_embeds,
            negative_image_embeds=embeds.negative_image_embeds,
            generator=generators,
            output_type="pil",
            **shared,
        )
        return list(out.images)

    return decoder, call, info, log


def build(spec: ModelSpec, device: str | None = None) -> pipeline.DiffusersGenerator:
    validate(spec)
    settings = pipeline.settings_from(spec)
    runtime = pipeline.runtime_for(settings, device)
    prior_ref = _prior(spec)
    if prior_ref is None:
        pipe, call, info, log = _build_combined(spec, settings, runtime)
    else:
        pipe, call, info, log = _build_two_stage(spec, settings, runtime, prior_ref)
    found = checkpoints(spec)
    if prior_ref is None and (joined := _connected_prior(pipe)) is not None:
        found.append(joined)
    renamed = {"version": "kandinsky_version", "mode": "kandinsky_mode"}
    extra = {renamed.get(k, k): v for k, v in info.items() if k not in ("steps", "guidance")}
    return pipeline.DiffusersGenerator(
        pipe, spec, settings, runtime, call, found, info["steps"], info["guidance"], extra, log
    )

"""Stable Diffusion 1.x / 2.x: any ``StableDiffusionPipeline`` checkpoint, optionally with its UNet
swapped for another (SD 1.5 + DPO is SD 1.5 with ``unet: {repo: mhdang/dpo-sd1.5-text2image-v1}``).

Family ``stable_diffusion``; fields beyond the common ones (``generators/diffusers_pipeline.py``):

    unet:           {repo, revision (main), subfolder (unet), variant} — a UNet2DConditionModel
                    loaded in place of the pipeline's own
    safety_checker: true (default: what the checkpoint ships, as the library does) | false.
                    Flagged images come back black; the lineage records the choice.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion, resolve_checkpoint
from blindspot_assets.config import ModelSpec
from blindspot_assets.generators import diffusers_pipeline as pipeline

FAMILY_PARAMS = {
    "unet": "a UNet to load in place of the pipeline's: {repo, revision, subfolder, variant}",
    "safety_checker": "keep the checkpoint's safety checker (true) or drop it (false)",
}
UNET_FIELDS = ("repo", "revision", "subfolder", "variant")


def _unet_entry(spec: ModelSpec) -> dict[str, Any] | None:
    raw = spec.params.get("unet")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"repo": raw}
    if not isinstance(raw, dict):
        raise pipeline.fail(
            spec, "unet", "must be a mapping", "write unet: {repo: ORG/NAME, subfolder: unet}"
        )
    unknown = sorted(set(raw) - set(UNET_FIELDS))
    if unknown:
        raise pipeline.fail(
            spec, f"unet.{unknown[0]}", "unknown field", f"use only {list(UNET_FIELDS)}"
        )
    entry = {"revision": "main", "subfolder": "unet", "variant": None, **raw}
    sub = entry["subfolder"]
    pipeline.check_repo(
        spec, "unet.repo", entry.get("repo"), f"{sub}/config.json" if sub else "config.json"
    )
    return entry


def validate(spec: ModelSpec) -> None:
    pipeline.check_params(spec, FAMILY_PARAMS)
    pipeline.settings_from(spec)
    _unet_entry(spec)
    if not isinstance(spec.params.get("safety_checker", True), bool):
        raise pipeline.fail(
            spec, "safety_checker", "must be true or false", "write safety_checker: false"
        )


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    """The checkpoints this entry is made of (the data version of ``model_checkpoints``)."""
    settings = pipeline.settings_from(spec)
    found = [resolve_checkpoint(settings.repo, settings.revision)]
    unet = _unet_entry(spec)
    if unet:
        found.append(
            resolve_checkpoint(unet["repo"], unet["revision"], subfolder=unet["subfolder"])
        )
    return found


def _load(spec: ModelSpec, settings: pipeline.DiffusionSettings, runtime: pipeline.Runtime) -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    kwargs: dict[str, Any] = {}
    unet = _unet_entry(spec)
    if unet:
        unet_kwargs = pipeline.hub_kwargs(unet["repo"], unet["revision"], unet["variant"])
        if unet["subfolder"]:
            unet_kwargs["subfolder"] = unet["subfolder"]
        kwargs["unet"] = UNet2DConditionModel.from_pretrained(
            unet["repo"], dtype=runtime.dtype, **unet_kwargs
        )
    if spec.params.get("safety_checker") is False:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return pipeline.load_pipeline(
        StableDiffusionPipeline,
        settings.repo,
        settings.revision,
        settings.variant,
        runtime,
        **kwargs,
    )


def build(spec: ModelSpec, device: str | None = None) -> pipeline.DiffusersGenerator:
    validate(spec)
    settings = pipeline.settings_from(spec)
    runtime = pipeline.runtime_for(settings, device)
    pipe = _load(spec, settings, runtime)
    pipeline.swap_scheduler(pipe, settings, spec)
    steps, guidance = pipeline.steps_and_guidance(settings, pipe)
    log = pipeline.PromptLog()

    def call(prompts: list[str], generators: list[torch.Generator]) -> list[Image.Image]:
        shared = pipeline.sampling_kwargs(settings, steps, guidance, len(prompts))
        out = log.call(pipe, prompt=prompts, generator=generators, output_type="pil", **shared)
        return list(out.images)

    extra = {
        "unet": _unet_entry(spec),
        "safety_checker": pipe.safety_checker is not None,
        "prediction_type": pipe.scheduler.config.get("prediction_type"),
    }
    return pipeline.DiffusersGenerator(
        pipe, spec, settings, runtime, call, checkpoints(spec), steps, guidance, extra, log
    )

"""PixArt-α through ``PixArtAlphaPipeline``.

Family ``pixart``; fields beyond the common ones (``generators/diffusers_pipeline.py``):

    resolution_binning: true (the library default) | false. With it, a 512×512 request to the
        1024 checkpoint (``PixArt-alpha/PixArt-XL-2-1024-MS``) is made at the nearest trained
        aspect-ratio bin (1024×1024) and resized down to 512×512; without it, it is made at 512
        directly. The lineage records which, and the size actually denoised.
    max_sequence_length: T5 tokens kept of a caption (default 120, the library's).
    clean_caption: false (default) | true. The library's default is true, but it silently turns
        itself off unless beautifulsoup4 and ftfy are installed; false makes the prompt the
        caption as is on every machine.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import CheckpointVersion, resolve_checkpoint
from blindspot_assets.config import ModelSpec
from blindspot_assets.generators import diffusers_pipeline as pipeline

FAMILY_PARAMS = {
    "resolution_binning": "denoise at the nearest trained aspect-ratio bin, resize (default true)",
    "max_sequence_length": "T5 tokens kept per caption (default 120)",
    "clean_caption": "the library's caption cleaning (default false)",
}
# transformer.config.sample_size → the bin table PixArtAlphaPipeline uses
_BINNED_SAMPLE_SIZES = {128: 1024, 64: 512, 32: 256}


def validate(spec: ModelSpec) -> None:
    pipeline.check_params(spec, FAMILY_PARAMS)
    pipeline.settings_from(spec)
    for name in ("resolution_binning", "clean_caption"):
        if not isinstance(spec.params.get(name, True), bool):
            raise pipeline.fail(spec, name, "must be true or false", f"write {name}: false")
    length = spec.params.get("max_sequence_length", 120)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise pipeline.fail(
            spec, "max_sequence_length", f"{length!r}", "use a positive integer (120)"
        )


def checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    settings = pipeline.settings_from(spec)
    return [resolve_checkpoint(settings.repo, settings.revision)]


def _denoised_size(
    pipe: Any, settings: pipeline.DiffusionSettings, binning: bool
) -> tuple[int, int]:
    """The size the transformer really denoises (binning moves 512×512 to a trained bin)."""
    if not binning:
        return settings.height, settings.width
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as pixart_module

    side = _BINNED_SAMPLE_SIZES[int(pipe.transformer.config.sample_size)]
    bins = getattr(pixart_module, f"ASPECT_RATIO_{side}_BIN")
    height, width = pipe.image_processor.classify_height_width_bin(
        settings.height, settings.width, ratios=bins
    )
    return int(height), int(width)


def build(spec: ModelSpec, device: str | None = None) -> pipeline.DiffusersGenerator:
    from diffusers import PixArtAlphaPipeline

    validate(spec)
    settings = pipeline.settings_from(spec)
    runtime = pipeline.runtime_for(settings, device)
    pipe = pipeline.load_pipeline(
        PixArtAlphaPipeline, settings.repo, settings.revision, settings.variant, runtime
    )
    pipeline.swap_scheduler(pipe, settings, spec)
    binning = bool(spec.params.get("resolution_binning", True))
    sample_size = int(pipe.transformer.config.sample_size)
    if binning and sample_size not in _BINNED_SAMPLE_SIZES:
        raise pipeline.fail(
            spec,
            "resolution_binning",
            f"the transformer's sample_size {sample_size} has no aspect-ratio bins",
            "set resolution_binning: false",
        )
    steps, guidance = pipeline.steps_and_guidance(settings, pipe)
    max_len = int(spec.params.get("max_sequence_length", 120))
    clean = bool(spec.params.get("clean_caption", False))
    log = pipeline.PromptLog()

    def call(prompts: list[str], generators: list[torch.Generator]) -> list[Image.Image]:
        out = log.call(
            pipe,
            prompt=prompts,
            generator=generators,
            use_resolution_binning=binning,
            max_sequence_length=max_len,
            clean_caption=clean,
            output_type="pil",
            **pipeline.sampling_kwargs(settings, steps, guidance, len(prompts), no_negative=""),
        )
        return list(out.images)

    extra: dict[str, Any] = {
        "resolution_binning": binning,
        "denoised_size": list(_denoised_size(pipe, settings, binning)),
        "max_sequence_length": max_len,
        "clean_caption": clean,
    }
    return pipeline.DiffusersGenerator(
        pipe, spec, settings, runtime, call, checkpoints(spec), steps, guidance, extra, log
    )

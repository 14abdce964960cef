"""Generative-model families: each is a module with ``validate(spec)`` and
``build(spec, device) -> ImageGenerator``. A model is added by a registry entry in the run config;
a family is added by a module here (``validate``, ``build``, ``checkpoints``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.base import ImageGenerator
from blindspot_assets.lineage import CheckpointVersion, combined_data_version

FAMILY_MODULES = {
    "demo": "blindspot_assets.generators.demo",
    "stable_diffusion": "blindspot_assets.generators.stable_diffusion",
    "pixart": "blindspot_assets.generators.pixart",
    "kandinsky": "blindspot_assets.generators.kandinsky",
    "pregenerated": "blindspot_assets.generators.pregenerated",
    "control": "blindspot_assets.generators.control",
}


def family_module(spec: ModelSpec) -> ModuleType:
    if spec.family not in FAMILY_MODULES:
        raise ConfigError(
            f"models.{spec.key}.family {spec.family!r} is unknown; known families: "
            f"{sorted(FAMILY_MODULES)}"
        )
    return importlib.import_module(FAMILY_MODULES[spec.family])


def validate_model(spec: ModelSpec) -> None:
    family_module(spec).validate(spec)


def model_checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    """The checkpoints a model entry points at, each resolved to a version (no weights loaded)."""
    found: list[CheckpointVersion] = family_module(spec).checkpoints(spec)
    return found


def model_data_version(spec: ModelSpec) -> str:
    return combined_data_version(model_checkpoints(spec))


def build_generator(spec: ModelSpec, device: str | None = None) -> ImageGenerator:
    gen: ImageGenerator = family_module(spec).build(spec, device)
    return gen

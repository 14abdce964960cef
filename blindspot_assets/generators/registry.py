"""Generative-model families: each is a module with ``validate(spec)`` and
``build(spec, device) -> ImageGenerator``. A model is added by a registry entry in the run config;
a family is added by a module here."""

from __future__ import annotations

import importlib
from types import ModuleType

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.base import ImageGenerator

FAMILY_MODULES = {
    "demo": "blindspot_assets.generators.demo",
    "stable_diffusion": "blindspot_assets.generators.stable_diffusion",
    "pixart": "blindspot_assets.generators.pixart",
    "kandinsky": "blindspot_assets.generators.kandinsky",
    "pregenerated": "blindspot_assets.generators.pregenerated",
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


def build_generator(spec: ModelSpec, device: str | None = None) -> ImageGenerator:
    gen: ImageGenerator = family_module(spec).build(spec, device)
    return gen

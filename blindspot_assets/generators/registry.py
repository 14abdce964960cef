"""Generative-model families: each is a module satisfying ``GeneratorFamily`` — ``validate``,
``build`` and ``checkpoints``. A model is added by a registry entry in the run config; a family
is added by a module and an entry in ``FAMILY_MODULES`` (mypy checks every listed module against
the protocol)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

from blindspot_assets.checkpoint_versions import (
    CheckpointVersion,
    MissingInput,
    combined_data_version,
)
from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.base import ImageGenerator

FAMILY_MODULES = {
    "demo": "blindspot_assets.generators.demo",
    "stable_diffusion": "blindspot_assets.generators.stable_diffusion",
    "pixart": "blindspot_assets.generators.pixart",
    "kandinsky": "blindspot_assets.generators.kandinsky",
    "pregenerated": "blindspot_assets.generators.pregenerated",
    "control": "blindspot_assets.generators.control",
}


class GeneratorFamily(Protocol):
    """What a family module provides."""

    def validate(self, spec: ModelSpec) -> None:
        """Raise ``ConfigError`` naming the ``models.<key>`` field and the fix (no weights)."""
        ...

    def checkpoints(self, spec: ModelSpec) -> list[CheckpointVersion]:
        """The checkpoints the entry points at, each resolved to a version (no weights)."""
        ...

    def build(self, spec: ModelSpec, device: str | None = None) -> ImageGenerator:
        """The generator, its weights loaded on ``device``."""
        ...


if TYPE_CHECKING:  # every family satisfies the protocol (imported lazily at run time)
    from blindspot_assets.generators import (
        control,
        demo,
        kandinsky,
        pixart,
        pregenerated,
        stable_diffusion,
    )

    _FAMILIES: tuple[GeneratorFamily, ...] = (
        control, demo, kandinsky, pixart, pregenerated, stable_diffusion,
    )  # fmt: skip


def family_module(spec: ModelSpec) -> GeneratorFamily:
    if spec.family not in FAMILY_MODULES:
        raise ConfigError(
            f"models.{spec.key}.family {spec.family!r} is unknown; known families: "
            f"{sorted(FAMILY_MODULES)}"
        )
    return cast(GeneratorFamily, importlib.import_module(FAMILY_MODULES[spec.family]))


def validate_model(spec: ModelSpec) -> None:
    family_module(spec).validate(spec)


def check_models(specs: Iterable[ModelSpec]) -> None:
    """Every model entry's family and fields, when the code location loads: a mistyped field
    stops the load (and so every run) with the nearest known name. What is merely not on this
    machine yet (``MissingInput``: a checkpoint folder to fetch) is left to the run's checks."""
    for spec in specs:
        try:
            validate_model(spec)
        except MissingInput:
            continue


def carries_real_history(spec: ModelSpec) -> bool:
    """Whether the family's images are the real files themselves (``control``): they already
    carry their real file's history, and the matched-history policy must not add it again."""
    return bool(getattr(family_module(spec), "CARRIES_REAL_HISTORY", False))


def resolve_model_checkpoints(spec: ModelSpec) -> list[CheckpointVersion]:
    """The checkpoints a model entry points at, each resolved to a version (no weights loaded)."""
    return family_module(spec).checkpoints(spec)


def model_data_version(spec: ModelSpec) -> str:
    """The data version of the ``model_checkpoints`` source asset for this entry."""
    return combined_data_version(resolve_model_checkpoints(spec))


def build_generator(spec: ModelSpec, device: str | None = None) -> ImageGenerator:
    return family_module(spec).build(spec, device)


def batch_size(spec: ModelSpec) -> int:
    """Images per generator call (``params.batch_size``, default 8)."""
    return int(spec.params.get("batch_size", 8))


def base_seed(spec: ModelSpec, run_seed: int) -> int:
    """The seed images of this model derive from (``params.seed``, else the run's)."""
    return int(spec.params.get("seed", run_seed))

"""Real-image source kinds: each is a module satisfying ``SourceKind`` — ``validate(spec)`` and
``fetch(spec, out_dir, seed, progress) -> manifest``. A kind is added by a module and an entry
in ``SOURCE_MODULES``; mypy checks every listed module against the protocol."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import polars as pl

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.generators.base import ProgressFn

SOURCE_MODULES = {
    "demo": "blindspot_assets.sources.demo",
    "laion_parquet": "blindspot_assets.sources.laion_parquet",
    "img2dataset": "blindspot_assets.sources.img2dataset",
    "folder": "blindspot_assets.sources.folder",
}


class SourceKind(Protocol):
    """What a source module provides."""

    def validate(self, spec: SourceSpec) -> None:
        """Raise ``ConfigError`` naming the ``real.params`` field and the fix."""
        ...

    def fetch(
        self, spec: SourceSpec, out_dir: Path, seed: int, progress: ProgressFn | None = None
    ) -> pl.DataFrame:
        """Write the image–caption pairs into ``out_dir``; their manifest (a status per row)."""
        ...


if TYPE_CHECKING:  # every kind satisfies the protocol (imported lazily at run time)
    from blindspot_assets.sources import demo, folder, img2dataset, laion_parquet

    _KINDS: tuple[SourceKind, ...] = (demo, folder, img2dataset, laion_parquet)


def source_module(spec: SourceSpec) -> SourceKind:
    if spec.kind not in SOURCE_MODULES:
        raise ConfigError(f"unknown real.kind {spec.kind!r}; known kinds: {sorted(SOURCE_MODULES)}")
    return cast(SourceKind, importlib.import_module(SOURCE_MODULES[spec.kind]))

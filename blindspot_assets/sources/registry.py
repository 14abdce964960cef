"""Real-image source kinds: each is a module with ``validate(spec)`` and
``fetch(spec, out_dir, seed, progress) -> manifest``."""

from __future__ import annotations

import importlib
from types import ModuleType

from blindspot_assets.config import ConfigError, SourceSpec

SOURCE_MODULES = {
    "demo": "blindspot_assets.sources.demo",
    "laion_parquet": "blindspot_assets.sources.laion_parquet",
    "img2dataset": "blindspot_assets.sources.img2dataset",
    "folder": "blindspot_assets.sources.folder",
}


def source_module(spec: SourceSpec) -> ModuleType:
    if spec.kind not in SOURCE_MODULES:
        raise ConfigError(f"unknown real.kind {spec.kind!r}; known kinds: {sorted(SOURCE_MODULES)}")
    return importlib.import_module(SOURCE_MODULES[spec.kind])

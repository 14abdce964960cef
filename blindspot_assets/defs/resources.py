"""The one resource: the run config (which real source, which models, which encoder/SAE/stats)."""

from __future__ import annotations

import os

import dagster as dg

from blindspot_assets.config import CONFIG_ENV, DEFAULT_CONFIG, RunConfig, load_config


class RunConfigResource(dg.ConfigurableResource["RunConfigResource"]):
    """Points at a run config YAML (``$BLINDSPOT_CONFIG``, default: the embedded demo)."""

    config_path: str = str(DEFAULT_CONFIG)

    def load(self) -> RunConfig:
        return load_config(self.config_path)


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG)

"""The one resource: the run config (which real source, which models, which encoder/SAE/stats)."""

from __future__ import annotations

import os

import dagster as dg

from blindspot_assets.config import CONFIG_ENV, DEFAULT_CONFIG, RunConfig, load_config


class RunConfigResource(dg.ConfigurableResource["RunConfigResource"]):
    """Points at a run config YAML (``$BLINDSPOT_CONFIG``, default: the embedded demo)."""

    config_path: str = str(DEFAULT_CONFIG)

    def load(self) -> RunConfig:
        """The whole config: for what no asset's version covers (observations, checks)."""
        return load_config(self.config_path)

    def view(self, asset: str) -> RunConfig:
        """The config as ``asset`` may read it: the blocks it declares (``reads=``); any other
        block raises (``defs/versions.py``)."""
        from blindspot_assets.defs.versions import config_view  # versions reads this module

        return config_view(self.load(), asset)


def default_config_path() -> str:
    return os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG)

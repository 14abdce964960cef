"""The code location: every asset, check, job and resource of blindspot-assets.

Read this first. Stages (asset groups) run left to right:
inputs → generation → features → concepts → analysis. The science lives in plain modules
(sources, generators, encoders, sae, stats, report, store); ``defs/`` only wires them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from blindspot_assets.defs import (
    analysis,
    changes,
    checks,
    concepts,
    features,
    generation,
    inputs,
    naming,
)
from blindspot_assets.defs import verification as verification_defs
from blindspot_assets.defs.crash_guard import with_crash_recovery
from blindspot_assets.defs.deployment import executor_from_env
from blindspot_assets.defs.jobs import blindspot_job, model_job, real_job, report_job
from blindspot_assets.defs.resources import RunConfigResource, default_config_path
from blindspot_assets.defs.versions import folded

_modules = [inputs, generation, features, concepts, analysis, changes, naming, checks]
_modules.append(verification_defs)  # confirm flagged blindspots


def _with_folded_versions(assets: Sequence[Any]) -> list[Any]:
    """Every asset's code version folded with its ancestors' (``defs/versions.folded``)."""
    own = {
        s.key.to_user_string(): s.code_version
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for s in a.specs
        if s.code_version is not None
    }
    parents = {
        s.key.to_user_string(): {d.asset_key.to_user_string() for d in s.deps}
        for a in assets
        if isinstance(a, dg.AssetsDefinition)
        for s in a.specs
    }
    versions = folded(own, parents)

    def fold(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        return spec.replace_attributes(code_version=versions[name]) if name in own else spec

    return [a.map_asset_specs(fold) if isinstance(a, dg.AssetsDefinition) else a for a in assets]


defs = dg.Definitions(
    assets=_with_folded_versions(dg.load_assets_from_modules(_modules)),
    asset_checks=dg.load_asset_checks_from_modules(_modules),
    jobs=[blindspot_job, real_job, model_job, report_job],
    executor=with_crash_recovery(executor_from_env()),  # stale runs released at start
    resources={"run_config": RunConfigResource(config_path=default_config_path())},
)

"""The project's code location with the executor its environment names (BLINDSPOT_EXECUTOR):
the same assets, checks, jobs and resources as ``blindspot_assets.definitions``."""

import dagster as dg

from blindspot_assets import definitions as _project
from blindspot_assets.defs.deployment import executor_from_env

defs = dg.Definitions(
    assets=_project.defs.assets,
    asset_checks=_project.defs.asset_checks,
    jobs=_project.defs.jobs,
    resources=_project.defs.resources,
    executor=executor_from_env(),
)

"""How an asset of this code location is declared, in one call: its stage (asset group), whether
it is partitioned by model (one run may cover a range: ``single_run``), where its step runs (CPU
tags, or the ``gpu`` pool with GPU tags), the run-config blocks it reads (``reads``) and so its
code version, derived from its body's code and those blocks (``defs/versions.py``)."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.deployment import CPU_OP_TAGS, GPU_OP_TAGS
from blindspot_assets.defs.partitions import model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.versions import derived_version

Dep = dg.AssetsDefinition | dg.AssetDep | dg.AssetKey
AssetDecorator = Callable[[Callable[..., Any]], dg.AssetsDefinition]


def stage_asset(
    *,
    group: str,
    deps: Sequence[Dep] = (),
    kinds: set[str],
    reads: Sequence[str],
    description: str,
    per_model: bool = False,
    runs_on: Literal["cpu", "gpu", "any"] = "cpu",
) -> AssetDecorator:
    """``dg.asset`` with this code location's conventions (see the module docstring); ``any``:
    no placement tags (the step runs wherever the run worker does)."""
    gpu = runs_on == "gpu"

    def decorate(body: Callable[..., Any]) -> dg.AssetsDefinition:
        return dg.asset(
            group_name=group,
            deps=list(deps),
            kinds=kinds,
            code_version=derived_version(body.__name__, [body], reads),
            description=description,
            partitions_def=model_partitions if per_model else None,
            backfill_policy=single_run if per_model else None,
            pool="gpu" if gpu else None,
            op_tags={"cpu": CPU_OP_TAGS, "gpu": GPU_OP_TAGS, "any": None}[runs_on],
        )(body)

    return decorate


TABLE_KINDS = {"duckdb", "polars"}


def table_asset(
    *, deps: Sequence[Dep], reads: Sequence[str], description: str, per_model: bool = False
) -> AssetDecorator:
    """An analysis asset that writes result tables (Parquet partitions + DuckDB views)."""
    return stage_asset(
        group="analysis",
        deps=deps,
        kinds=TABLE_KINDS,
        reads=reads,
        description=description,
        per_model=per_model,
    )


def config_of(context: dg.AssetExecutionContext, run_config: RunConfigResource) -> RunConfig:
    """The run config as the running asset may read it: the blocks it declares."""
    return run_config.view(context.asset_key.to_user_string())

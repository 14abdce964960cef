"""How an asset of this code location is declared, in one call: its stage (asset group), whether
it is partitioned by model (one run may cover a range: ``single_run``), where its step runs (CPU
tags, or the ``gpu`` pool with GPU tags) and its code version (``defs/versions.py``)."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import dagster as dg

from blindspot_assets.defs.deployment import CPU_OP_TAGS, GPU_OP_TAGS
from blindspot_assets.defs.partitions import model_partitions, single_run

Dep = dg.AssetsDefinition | dg.AssetDep | dg.AssetKey
AssetDecorator = Callable[[Callable[..., Any]], dg.AssetsDefinition]


def stage_asset(
    *,
    group: str,
    deps: Sequence[Dep] = (),
    kinds: set[str],
    code_version: str,
    description: str,
    per_model: bool = False,
    runs_on: Literal["cpu", "gpu", "any"] = "cpu",
) -> AssetDecorator:
    """``dg.asset`` with this code location's conventions (see the module docstring); ``any``:
    no placement tags (the step runs wherever the run worker does)."""
    gpu = runs_on == "gpu"
    return dg.asset(
        group_name=group,
        deps=list(deps),
        kinds=kinds,
        code_version=code_version,
        description=description,
        partitions_def=model_partitions if per_model else None,
        backfill_policy=single_run if per_model else None,
        pool="gpu" if gpu else None,
        op_tags={"cpu": CPU_OP_TAGS, "gpu": GPU_OP_TAGS, "any": None}[runs_on],
    )


TABLE_KINDS = {"duckdb", "polars"}


def table_asset(
    *, deps: Sequence[Dep], code_version: str, description: str, per_model: bool = False
) -> AssetDecorator:
    """An analysis asset that writes result tables (Parquet partitions + DuckDB views)."""
    return stage_asset(
        group="analysis",
        deps=deps,
        kinds=TABLE_KINDS,
        code_version=code_version,
        description=description,
        per_model=per_model,
    )

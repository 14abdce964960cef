"""Per-image stages as fan-out graphs: one Dagster step per shard of rows, all filling one store.

A sharded asset is a graph of ``2 + scale.shards`` ops:

``<asset>_plan``
    Creates (or resumes) each dataset's output store — the only step that does — and splits
    its rows into at most ``scale.shards`` chunk-aligned ranges, one per shard op.
``<asset>_shard_<i>``
    Fills range i of every dataset of the run. GPU steps: pool ``gpu`` and ``GPU_OP_TAGS``, so
    on Kubernetes each shard is a Job with its own card and on Dask a task on a ``GPU``
    worker. Shards write disjoint chunks of one Zarr store (or one manifest part each), so
    nothing is copied together and no shard waits on another.
``<asset>_merge``
    Checks that every shard is done, finishes the stores (a staged rebuild is swapped in here)
    and records the asset's metadata.

The fan-out is static — read from the run config when the code location loads, like the model
partitions — so every executor runs it (dagster-dask cannot run dynamic outputs) and every
step key is known before a run (Kubernetes per-step config). A re-materialisation re-plans:
finished shards find nothing pending and return at once, so an interrupted backfill resumes
where each shard stopped. With ``scale.shards: 1`` (the demo) the graph has one shard op.

Each shard returns a frozen summary (``blindspot_assets.shards``); the merge hands a dataset's
summaries, in row order, to the asset's ``merge``, which adds them up with ``merge(parts)``.
"""

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.deployment import CPU_OP_TAGS, GPU_OP_TAGS
from blindspot_assets.defs.metadata import lineage_md
from blindspot_assets.defs.partitions import N_SHARDS, model_keys, model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.versions import derived_version
from blindspot_assets.shards import Shard
from blindspot_assets.store.layout import REAL

S = TypeVar("S")


@dataclass(frozen=True)
class ShardDone(Generic[S]):
    """What a shard op hands the merge for one of its shards."""

    shard: Shard
    summary: S


@dataclass(frozen=True)
class Stage(Generic[S]):
    """The three functions of a sharded stage.

    ``plan(cfg, dataset, n_shards)`` creates or resumes the dataset's store and returns its
    shards' row ranges; ``work(context, cfg, shard)`` fills one shard and returns its summary;
    ``merge(context, cfg, dataset, summaries)`` finishes the store and returns its metadata.
    """

    plan: Callable[[RunConfig, str, int], Sequence[tuple[int, int]]]
    work: Callable[[dg.OpExecutionContext, RunConfig, Shard], S]
    merge: Callable[[dg.OpExecutionContext, RunConfig, str, list[S]], dict[str, Any]]


def _datasets(context: dg.OpExecutionContext, partitioned: bool) -> list[str]:
    return model_keys(context) if partitioned else [REAL]


def combine_metadata(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The first dataset's metadata, plus every dataset's under ``models`` when a run covers
    several model partitions (one materialisation per partition carries the run's metadata)."""
    first = next(iter(per_dataset))
    meta = dict(per_dataset[first])
    if len(per_dataset) > 1:
        meta["models"] = lineage_md(
            {
                d: {k: v for k, v in m.items() if isinstance(v, int | float | str)}
                for d, m in per_dataset.items()
            }
        )
    return meta


def sharded_asset(
    name: str,
    upstream: Sequence[dg.AssetsDefinition | dg.SourceAsset],
    stage: Stage[Any],
    *,
    group: str,
    kinds: set[str],
    reads: Sequence[str],
    description: str,
    per_model: bool = False,
    gpu: bool = True,
    n_shards: int | None = None,
) -> dg.AssetsDefinition:
    """A graph-backed asset that fans ``stage.work`` out over ``n_shards`` (``scale.shards``);
    ``per_model``: partitioned by model, one run covering a range of them; ``reads``: the
    run-config blocks the stage's functions read (its code version covers them and their code)."""
    partitioned = per_model
    n = n_shards or N_SHARDS
    upstream_keys = {f"after_{i}": u.key for i, u in enumerate(upstream)}
    shard_names = [f"shard_{i}" for i in range(n)]
    plan_op = _plan_op(name, stage, upstream_keys, shard_names, partitioned)
    shard_op = _shard_op(name, stage, gpu)
    merge_op = _merge_op(name, stage, shard_names, partitioned)

    def compose(**upstream_in: Any) -> Any:
        planned = plan_op(**upstream_in)
        handles = planned if n > 1 else (planned,)
        done = [shard_op.alias(f"{name}_{s}")(h) for s, h in zip(shard_names, handles, strict=True)]
        return merge_op(**dict(zip(shard_names, done, strict=True)))

    compose.__name__ = name
    # dg.graph_asset reads the compose function's parameters as the asset's inputs
    compose.__dict__["__signature__"] = _signature(list(upstream_keys))
    return dg.graph_asset(
        name=name,
        description=description,
        ins={k: dg.AssetIn(key=key, dagster_type=dg.Nothing) for k, key in upstream_keys.items()},
        group_name=group,
        partitions_def=model_partitions if per_model else None,
        backfill_policy=single_run if per_model else None,
        kinds=kinds,
        code_version=derived_version(name, [stage.plan, stage.work, stage.merge], reads),
    )(compose)


def _plan_op(
    name: str,
    stage: Stage[Any],
    upstream_keys: dict[str, dg.AssetKey],
    shard_names: list[str],
    partitioned: bool,
) -> dg.OpDefinition:
    n = len(shard_names)

    @dg.op(
        name=f"{name}_plan",
        ins={k: dg.In(dg.Nothing) for k in upstream_keys},
        out={s: dg.Out(list) for s in shard_names},
        tags=CPU_OP_TAGS,
    )
    def plan_op(
        context: dg.OpExecutionContext, run_config: RunConfigResource
    ) -> Iterator[dg.Output[list[Shard]]]:
        asked = run_config.load().scale.shards  # the fan-out, not what the stage computes
        if asked != n:
            context.log.warning(
                f"the run config asks for scale.shards={asked} but the code location "
                f"was loaded with {n}: using {n} (reload the code location to change it)"
            )
        cfg = run_config.view(name)
        per_op: list[list[Shard]] = [[] for _ in range(n)]
        for dataset in _datasets(context, partitioned):
            ranges = list(stage.plan(cfg, dataset, n))
            context.log.info(f"{name} {dataset}: {len(ranges)} shard(s) {ranges}")
            for i, (a, b) in enumerate(ranges):
                per_op[i].append(Shard(dataset, a, b, i, len(ranges)))
        for shard_name, shards in zip(shard_names, per_op, strict=True):
            yield dg.Output(shards, output_name=shard_name)

    return plan_op


def _shard_op(name: str, stage: Stage[Any], gpu: bool) -> dg.OpDefinition:
    @dg.op(
        name=f"{name}_shard",
        out=dg.Out(list),
        tags=GPU_OP_TAGS if gpu else CPU_OP_TAGS,
        pool="gpu" if gpu else None,
    )
    def shard_op(
        context: dg.OpExecutionContext, run_config: RunConfigResource, shards: list[Shard]
    ) -> list[ShardDone[Any]]:
        cfg = run_config.view(name)
        return [ShardDone(s, stage.work(context, cfg, s)) for s in shards]

    return shard_op


def _merge_op(
    name: str, stage: Stage[Any], shard_names: list[str], partitioned: bool
) -> dg.OpDefinition:
    def merge_fn(context: dg.OpExecutionContext, **done: list[ShardDone[Any]]) -> None:
        cfg: RunConfig = context.resources.run_config.view(name)
        flat = [d for shard_name in shard_names for d in done[shard_name]]
        per_dataset = {}
        for dataset in _datasets(context, partitioned):
            mine = [d for d in flat if d.shard.dataset == dataset]
            mine.sort(key=lambda d: d.shard.start)
            if not mine:
                got = [(d.shard.dataset, d.shard.rows) for d in flat]
                raise RuntimeError(f"{name}: no shard reported on {dataset} (got {got})")
            meta = stage.merge(context, cfg, dataset, [d.summary for d in mine])
            per_dataset[dataset] = {**meta, "n_shards": len(mine)}
        context.add_output_metadata(combine_metadata(per_dataset))

    # One named input per shard rather than a fan-in list: dagster-dask runs each step on its
    # own and loads no fan-in inputs (the merge would see no shard at all).
    first = inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    merge_fn.__dict__["__signature__"] = _signature(shard_names, first=first)
    return dg.op(
        name=f"{name}_merge",
        ins={s: dg.In(list) for s in shard_names},
        out=dg.Out(dg.Nothing),
        tags=CPU_OP_TAGS,
        required_resource_keys={"run_config"},
    )(merge_fn)


def _signature(params: list[str], first: inspect.Parameter | None = None) -> inspect.Signature:
    keyword = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in params]
    return inspect.Signature([first, *keyword] if first else keyword)

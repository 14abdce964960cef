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
"""

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.deployment import CPU_OP_TAGS, GPU_OP_TAGS
from blindspot_assets.defs.partitions import N_SHARDS, model_keys
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.store.layout import REAL


@dataclass(frozen=True)
class Shard:
    dataset: str  # REAL or a model key
    start: int
    stop: int
    index: int
    of: int

    @property
    def rows(self) -> tuple[int, int]:
        return (self.start, self.stop)


# plan(cfg, dataset, n_shards) -> row ranges; work(context, cfg, shard) -> summary of the shard;
# merge(context, cfg, dataset, shard summaries) -> the dataset's metadata.
PlanFn = Callable[[RunConfig, str, int], Sequence[tuple[int, int]]]
WorkFn = Callable[[dg.OpExecutionContext, RunConfig, Shard], dict[str, Any]]
MergeFn = Callable[[dg.OpExecutionContext, RunConfig, str, list[dict[str, Any]]], dict[str, Any]]


def _datasets(context: dg.OpExecutionContext, partitioned: bool) -> list[str]:
    return model_keys(context) if partitioned else [REAL]  # type: ignore[arg-type]


def combine_metadata(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The first dataset's metadata, plus every dataset's under ``models`` when a run covers
    several model partitions (one materialisation per partition carries the run's metadata)."""
    from blindspot_assets.defs.common import lineage_md

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
    *,
    name: str,
    upstream: Sequence[dg.AssetsDefinition | dg.SourceAsset],
    partitions_def: dg.PartitionsDefinition | None,
    plan: PlanFn,
    work: WorkFn,
    merge: MergeFn,
    description: str,
    group_name: str,
    kinds: set[str],
    code_version: str,
    backfill_policy: dg.BackfillPolicy | None = None,
    gpu: bool = True,
    n_shards: int | None = None,
) -> dg.AssetsDefinition:
    """A graph-backed asset that fans ``work`` out over ``n_shards`` (``scale.shards``) ops."""
    partitioned = partitions_def is not None
    n = n_shards or N_SHARDS
    upstream_keys = {f"after_{i}": u.key for i, u in enumerate(upstream)}
    shard_names = [f"shard_{i}" for i in range(n)]

    @dg.op(
        name=f"{name}_plan",
        ins={k: dg.In(dg.Nothing) for k in upstream_keys},
        out={s: dg.Out(list) for s in shard_names},
        tags=CPU_OP_TAGS,
    )
    def plan_op(
        context: dg.OpExecutionContext, run_config: RunConfigResource
    ) -> Iterator[dg.Output[list[Shard]]]:
        cfg = run_config.load()
        if cfg.scale.shards != n:
            context.log.warning(
                f"the run config asks for scale.shards={cfg.scale.shards} but the code location "
                f"was loaded with {n}: using {n} (reload the code location to change it)"
            )
        per_op: list[list[Shard]] = [[] for _ in range(n)]
        for dataset in _datasets(context, partitioned):
            ranges = list(plan(cfg, dataset, n))
            context.log.info(f"{name} {dataset}: {len(ranges)} shard(s) {ranges}")
            for i, (a, b) in enumerate(ranges):
                per_op[i].append(Shard(dataset, a, b, i, len(ranges)))
        for shard_name, shards in zip(shard_names, per_op, strict=True):
            yield dg.Output(shards, output_name=shard_name)

    @dg.op(
        name=f"{name}_shard",
        tags=GPU_OP_TAGS if gpu else CPU_OP_TAGS,
        pool="gpu" if gpu else None,
    )
    def shard_op(
        context: dg.OpExecutionContext, run_config: RunConfigResource, shards: list[Shard]
    ) -> list[dict[str, Any]]:
        cfg = run_config.load()
        return [
            {**work(context, cfg, s), "dataset": s.dataset, "shard_rows": list(s.rows)}
            for s in shards
        ]

    def merge_fn(context: dg.OpExecutionContext, **done: list[dict[str, Any]]) -> None:
        cfg = context.resources.run_config.load()
        flat = [s for shard_name in shard_names for s in done[shard_name]]
        per_dataset = {}
        for dataset in _datasets(context, partitioned):
            mine = sorted(
                (s for s in flat if s["dataset"] == dataset), key=lambda s: s["shard_rows"][0]
            )
            if not mine:
                got = [(s["dataset"], s["shard_rows"]) for s in flat]
                raise RuntimeError(f"{name}: no shard reported on {dataset} (got {got})")
            per_dataset[dataset] = merge(context, cfg, dataset, mine)
            per_dataset[dataset]["n_shards"] = len(mine)
        context.add_output_metadata(combine_metadata(per_dataset))

    # One named input per shard rather than a fan-in list: dagster-dask runs each step on its
    # own and loads no fan-in inputs (the merge would see no shard at all).
    merge_fn.__signature__ = _signature(  # type: ignore[attr-defined]
        shard_names, first=inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    merge_op = dg.op(
        name=f"{name}_merge",
        ins={s: dg.In(list) for s in shard_names},
        out=dg.Out(dg.Nothing),
        tags=CPU_OP_TAGS,
        required_resource_keys={"run_config"},
    )(merge_fn)

    def compose(**upstream_in: Any) -> Any:
        planned = plan_op(**upstream_in)
        handles = planned if n > 1 else (planned,)
        done = [shard_op.alias(f"{name}_{s}")(h) for s, h in zip(shard_names, handles, strict=True)]
        return merge_op(**dict(zip(shard_names, done, strict=True)))

    compose.__name__ = name
    # dg.graph_asset reads the compose function's parameters as the asset's inputs
    compose.__signature__ = _signature(list(upstream_keys))  # type: ignore[attr-defined]
    return dg.graph_asset(
        compose,
        name=name,
        description=description,
        ins={k: dg.AssetIn(key=key, dagster_type=dg.Nothing) for k, key in upstream_keys.items()},
        group_name=group_name,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        kinds=kinds,
        code_version=code_version,
    )


def _signature(params: list[str], first: inspect.Parameter | None = None) -> inspect.Signature:
    keyword = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in params]
    return inspect.Signature([first, *keyword] if first else keyword)


def merge_shard_summaries(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset's summary from its shards': counts and count tables add up, ``seconds`` is
    the compute time of all shards (GPU-seconds), text is the first shard's; other floats
    (rates, means) are the caller's to recompute."""
    out: dict[str, Any] = {}
    for key in shards[0]:
        values = [s[key] for s in shards if key in s]
        first = values[0]
        if key in ("dataset", "shard_rows", "lineage"):
            continue
        if key == "seconds":
            out[key] = float(sum(values))
        elif isinstance(first, int) and not isinstance(first, bool):
            out[key] = int(sum(values))
        elif isinstance(first, dict):
            table: dict[str, int] = {}
            for v in values:
                for k, n in v.items():
                    table[k] = table.get(k, 0) + int(n)
            out[key] = table
        elif isinstance(first, str):
            out[key] = first
    return out


def finish_sharded_store(path: Any, lineage: dict[str, Any] | None = None) -> None:
    """After every shard ran: the store must be complete; record who made it and finish it
    (a staged rebuild replaces the previous store here, once)."""
    import time

    from blindspot_assets.store.rowstore import RowStore

    store = RowStore.open_being_written(path)
    if not store.is_complete():
        pending = store.pending_blocks()
        raise RuntimeError(
            f"{path}: {sum(b - a for a, b in pending)} rows still pending after every shard ran "
            f"(first {pending[:3]}); re-materialise to resume them"
        )
    store.finish(**(lineage or {}), completed_at=time.time())

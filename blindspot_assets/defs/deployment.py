"""Where the steps run: the executor, and what each asset asks of the machine it runs on.

One owner for deployment choices, read from the environment of the code location, so the
same code runs on a laptop, one GPU box, a Dask cluster or Kubernetes:

``BLINDSPOT_EXECUTOR``
    ``multiprocess`` (default: Dagster's multi-or-in-process executor; ``-c
    configs/in_process.yaml`` still selects in-process), ``in_process``, ``dask``
    (dagster-dask; ``BLINDSPOT_DASK_SCHEDULER`` = a scheduler address, else a LocalCluster)
    or ``k8s`` (dagster-k8s: one Kubernetes Job per step; needs the K8sRunLauncher).

GPU steps (generation, feature extraction, SAE training and encoding) are in the Dagster
concurrency pool ``gpu`` (``dagster.yaml``: at most ``default_limit`` at a time) and carry
``GPU_OP_TAGS``:

- ``dagster-k8s/config``: requests/limits of ``BLINDSPOT_GPU_RESOURCE`` (``nvidia.com/gpu``) ×
  ``BLINDSPOT_GPUS_PER_STEP`` (1), CPU and memory, a node selector
  (``BLINDSPOT_GPU_NODE_SELECTOR``, JSON) and tolerations (``BLINDSPOT_GPU_TOLERATIONS``, JSON);
- ``dagster-dask/resource_requirements``: ``{"GPU": n}``, so a Dask step only lands on a worker
  started with ``--resources GPU=1`` (one GPU step per card).

CPU steps (statistics, tables, report) carry ``CPU_OP_TAGS`` (``BLINDSPOT_CPU_NODE_SELECTOR``,
``BLINDSPOT_CPU_REQUEST``, ``BLINDSPOT_CPU_MEMORY``). ``deploy/`` has the Helm values that set
these variables and the run launcher; ``deploy/README.md`` explains them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

EXECUTOR_ENV = "BLINDSPOT_EXECUTOR"
K8S_CONFIG_TAG = "dagster-k8s/config"
DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"

# The assets whose steps need an accelerator (and sit in the `gpu` concurrency pool): the
# per-image stages run in shard steps ``<asset>_shard_<i>``; the SAE's training, the
# verification of flagged blindspots (it generates and encodes) and the vision-language
# labeller each run in one step.
SHARDED_GPU_ASSETS = (
    "generated_images",
    "real_features",
    "gen_features",
    "real_concept_codes",
    "concept_codes",
)
SINGLE_STEP_GPU_ASSETS = ("sae", "blindspot_verification", "concept_names")
GPU_ASSETS = (*SHARDED_GPU_ASSETS, *SINGLE_STEP_GPU_ASSETS)


def gpu_op_names(n_shards: int) -> tuple[str, ...]:
    """The names of the GPU ops (steps) of a code location loaded with ``n_shards``."""
    shards = [f"{a}_shard_{i}" for a in SHARDED_GPU_ASSETS for i in range(n_shards)]
    return (*SINGLE_STEP_GPU_ASSETS, *shards)


def _env_json(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"${name} must be JSON, e.g. {json.dumps(default)}; got {raw!r}") from exc


def gpu_op_tags(
    gpus: int | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    gpu_resource: str | None = None,
) -> dict[str, Any]:
    """Op tags of a GPU step: a whole card (or ``gpus`` of them) per step, on a GPU node.

    Every argument defaults to its environment variable (see the module docstring), then to a
    one-GPU step on nodes labelled ``blindspot/accelerator=gpu`` tolerating the usual
    ``nvidia.com/gpu`` taint.
    """
    n = gpus if gpus is not None else int(os.environ.get("BLINDSPOT_GPUS_PER_STEP", "1"))
    resource = gpu_resource or os.environ.get("BLINDSPOT_GPU_RESOURCE", "nvidia.com/gpu")
    cpu = cpu or os.environ.get("BLINDSPOT_GPU_STEP_CPU", "8")
    memory = memory or os.environ.get("BLINDSPOT_GPU_STEP_MEMORY", "64Gi")
    selector = dict(
        node_selector
        if node_selector is not None
        else _env_json("BLINDSPOT_GPU_NODE_SELECTOR", {"blindspot/accelerator": "gpu"})
    )
    tolerations = (
        tolerations
        if tolerations is not None
        else _env_json(
            "BLINDSPOT_GPU_TOLERATIONS",
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        )
    )
    return {
        K8S_CONFIG_TAG: {
            "container_config": {
                "resources": {
                    # a GPU cannot be overcommitted: requests and limits must be equal
                    "requests": {"cpu": cpu, "memory": memory, resource: str(n)},
                    "limits": {"memory": memory, resource: str(n)},
                }
            },
            "pod_spec_config": {"node_selector": selector, "tolerations": tolerations},
            # replace (not deep-merge) the CPU defaults' resources and node selector
            "merge_behavior": "SHALLOW",
        },
        DASK_RESOURCES_TAG: {"GPU": n},
    }


def cpu_op_tags(
    cpu: str | None = None,
    memory: str | None = None,
    node_selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Op tags of a CPU step (statistics over the code stores, tables, report)."""
    cpu = cpu or os.environ.get("BLINDSPOT_CPU_REQUEST", "2")
    memory = memory or os.environ.get("BLINDSPOT_CPU_MEMORY", "16Gi")
    selector = dict(
        node_selector if node_selector is not None else _env_json("BLINDSPOT_CPU_NODE_SELECTOR", {})
    )
    pod_spec: dict[str, Any] = {"node_selector": selector} if selector else {}
    return {
        K8S_CONFIG_TAG: {
            "container_config": {
                "resources": {
                    "requests": {"cpu": cpu, "memory": memory},
                    "limits": {"memory": memory},
                }
            },
            **({"pod_spec_config": pod_spec} if pod_spec else {}),
        }
    }


# Evaluated when the code location loads: the deployment's environment decides.
GPU_OP_TAGS = gpu_op_tags()
CPU_OP_TAGS = cpu_op_tags()


def k8s_executor_config(
    namespace: str | None = None, gpu_ops: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Config of dagster-k8s' ``k8s_job_executor``: CPU defaults for every step, and the GPU
    profile for each GPU op (``per_step_k8s_config``), so the placement holds even for an
    op defined without ``GPU_OP_TAGS``."""
    if gpu_ops is None:
        from blindspot_assets.defs.partitions import N_SHARDS

        gpu_ops = gpu_op_names(N_SHARDS)
    gpu = gpu_op_tags()[K8S_CONFIG_TAG]
    config: dict[str, Any] = {
        "step_k8s_config": cpu_op_tags()[K8S_CONFIG_TAG],
        "per_step_k8s_config": dict.fromkeys(gpu_ops, gpu),
    }
    namespace = namespace or os.environ.get("BLINDSPOT_K8S_NAMESPACE")
    if namespace:
        config["job_namespace"] = namespace
    return config


def dask_executor_config() -> dict[str, Any]:
    """Config of dagster-dask's executor: an existing scheduler, or a LocalCluster."""
    address = os.environ.get("BLINDSPOT_DASK_SCHEDULER")
    if address:
        return {"cluster": {"existing": {"address": address}}}
    workers = int(os.environ.get("BLINDSPOT_DASK_WORKERS", "2"))
    return {
        "cluster": {
            "local": {
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                # each local worker offers one "GPU" slot: GPU steps run one per worker
                "resources": {"GPU": 1},
            }
        }
    }


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``$BLINDSPOT_EXECUTOR`` (see the module docstring)."""
    kind = os.environ.get(EXECUTOR_ENV, "multiprocess").strip().lower()
    if kind in ("", "multiprocess", "default"):
        return dg.multi_or_in_process_executor
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "dask":
        return dask_pool_safe_executor().configured(dask_executor_config(), name="dask")
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(k8s_executor_config(), name="k8s")
    raise ValueError(
        f"${EXECUTOR_ENV}={kind!r}: use multiprocess (default), in_process, dask or k8s"
    )


def dask_pool_safe_executor() -> dg.ExecutorDefinition:
    """dagster-dask's executor, made to work with assets in concurrency pools.

    dagster-dask 0.29.27 hands the ``DagsterRun`` to ``client.submit``; dask ≥ 2024.12 walks
    tuple arguments, and a run of pooled assets (``pool="gpu"``) carries a ``RunOpConcurrency``
    record that refuses iteration, so every run fails before its first step. Dask never
    enforced Dagster pools (GPU placement on Dask is the ``GPU`` worker resource), so the run
    handed to the workers drops that field. Known upstream limitation, not worked around: two
    concurrent runs of the same job on one *existing* scheduler share task keys
    (dagster-io/dagster#21418); with a LocalCluster per run (the default here) they do not.
    """
    from dagster_dask.executor import DaskExecutor, dask_executor

    class PoolSafeDaskExecutor(DaskExecutor):
        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            run = plan_context.dagster_run
            if getattr(run, "run_op_concurrency", None) is not None:
                plan_data = plan_context._plan_data  # private: no public setter
                plan_context._plan_data = plan_data._replace(
                    dagster_run=run._replace(run_op_concurrency=None)
                )
            yield from super().execute(plan_context, execution_plan)

    @dg.executor(
        name="dask",
        config_schema=dask_executor.config_schema.as_field(),
        requirements=dg.multiple_process_executor_requirements(),
    )
    def pool_safe_dask_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
        cluster = init_context.executor_config["cluster"]
        if not isinstance(cluster, Mapping):
            raise TypeError(f"dask executor config 'cluster' must be a mapping, got {cluster!r}")
        ((cluster_type, cluster_config),) = cluster.items()
        return PoolSafeDaskExecutor(cluster_type, cluster_config)

    return pool_safe_dask_executor

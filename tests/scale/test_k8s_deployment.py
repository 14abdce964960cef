"""The Kubernetes deployment, checked without a cluster: load deploy/helm/values.yaml, build the
k8s executor from its environment, and let dagster-k8s' own step handler construct the Job of
every step of a model backfill against a recording Kubernetes API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import (
    create_context_free_log_manager,
)
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import (
    StepHandlerContext,
)
from dagster._core.test_utils import create_run_for_test, instance_for_test
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s.client import DagsterKubernetesClient
from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA, k8s_job_executor

from blindspot_assets.defs import deployment

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "helm" / "values.yaml"
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-token}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: blindspot}}]
current-context: ctx
"""


# The steps that need a GPU in a code location loaded with scale.shards = 2, written out (not
# taken from the code under test): the SAE's training step, the verification of flagged
# blindspots (it generates and encodes), the vision-language labeller, and both shard steps of
# every per-image stage. Plans, merges, statistics and tables run on CPU nodes.
GPU_STEPS = {
    "sae",
    "blindspot_verification",
    "concept_names",
    "generated_images_shard_0",
    "generated_images_shard_1",
    "real_features_shard_0",
    "real_features_shard_1",
    "gen_features_shard_0",
    "gen_features_shard_1",
    "real_concept_codes_shard_0",
    "real_concept_codes_shard_1",
    "concept_codes_shard_0",
    "concept_codes_shard_1",
}
# model_job (one model partition): generation, its features and codes, and the verification
MODEL_JOB_GPU_STEPS = {
    "blindspot_verification",
    "generated_images.generated_images_shard_0",
    "generated_images.generated_images_shard_1",
    "gen_features.gen_features_shard_0",
    "gen_features.gen_features_shard_1",
    "concept_codes.concept_codes_shard_0",
    "concept_codes.concept_codes_shard_1",
}


@pytest.fixture
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture
def fresh_code_location():
    """Load the code location anew under the test's environment, as a deployment does: op
    tags are computed when the modules load, so modules loaded by earlier tests would carry
    the defaults. The earlier modules are put back afterwards."""
    names = [
        n
        for n in sys.modules
        if n == "blindspot_assets.definitions" or n.startswith("blindspot_assets.defs")
    ]
    saved = {n: sys.modules.pop(n) for n in names}
    yield
    for n in [n for n in sys.modules if n in names or n.startswith("blindspot_assets.defs")]:
        sys.modules.pop(n, None)
    sys.modules.update(saved)


@pytest.fixture
def deployment_env(values, monkeypatch, tmp_path) -> dict[str, str]:
    """The user-code deployment's environment, as the code location would see it."""
    (user,) = values["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in user["env"]}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # the image's run config is not on this machine: the code location loads the demo's, with
    # its per-image stages fanned out over two shard steps each
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["data_root"] = str(tmp_path / "data")
    raw["scale"] = {"shards": 2}
    config = tmp_path / "sharded.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("BLINDSPOT_CONFIG", str(config))
    return env


def _launcher_config(values: dict, kubeconfig: Path) -> dict:
    """The chart's runLauncher block in the instance's (snake_case) form."""
    helm = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = helm["runK8sConfig"]
    return {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_image": "registry.example.org/blindspot-assets:0.1.0",
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "env_secrets": [s["name"] for s in helm["envSecrets"]],
        "volumes": helm["volumes"],
        "volume_mounts": [
            {"name": m["name"], "mount_path": m["mountPath"]} for m in helm["volumeMounts"]
        ],
        "run_k8s_config": {"container_config": run_k8s["containerConfig"]},
    }


def _step_jobs(instance, recon_job, executor, steps_to_launch):
    """Launch each step through the executor's real step handler; return the Job bodies."""
    batch_api = mock.MagicMock()
    handler = executor._step_handler
    handler._api_client = DagsterKubernetesClient.production_client(batch_api_override=batch_api)
    plan = create_execution_plan(recon_job, tags={"dagster/partition": "demo-a"})
    run = create_run_for_test(
        instance,
        job_name=recon_job.job_name,
        job_code_origin=recon_job.get_python_origin(),
        tags={"dagster/partition": "demo-a"},
    )
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(
            job=recon_job,
            dagster_run=run,
            instance=instance,
            execution_plan=plan,
            raise_on_error=True,
            retry_mode=RetryMode.DISABLED,
        ),
        log_manager=create_context_free_log_manager(instance, run),
        executor=executor,
        output_capture=None,
    )
    jobs = {}
    for step_key in steps_to_launch:
        args = ExecuteStepArgs(recon_job.get_python_origin(), run.run_id, [step_key])
        ctx = StepHandlerContext(
            instance=instance, plan_context=plan_context, steps=plan.steps, execute_step_args=args
        )
        list(handler.launch_step(ctx))
        name, _, kwargs = batch_api.method_calls[-1]
        assert name == "create_namespaced_job"
        jobs[step_key] = (kwargs["body"], kwargs["namespace"])
    return jobs


def test_executor_config_from_the_helm_values_is_valid(deployment_env, fresh_code_location):
    config = deployment.k8s_executor_config()
    result = process_config(resolve_to_config_type(_K8S_EXECUTOR_CONFIG_SCHEMA), config)
    assert result.success, result.errors
    assert set(config["per_step_k8s_config"]) == GPU_STEPS
    assert config["job_namespace"] == "blindspot"
    # the executor the code location would pick
    assert deployment.executor_from_env().name == "k8s"


def test_step_jobs_request_gpus_on_gpu_nodes_only(
    tmp_path, values, deployment_env, fresh_code_location
):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher = {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": _launcher_config(values, kubeconfig),
    }
    with instance_for_test(overrides={"run_launcher": launcher}) as instance:
        recon_job = ReconstructableRepository.for_module(
            "blindspot_assets.definitions", "defs", working_directory=str(REPO)
        ).get_reconstructable_job("model_job")
        processed = process_config(
            resolve_to_config_type(_K8S_EXECUTOR_CONFIG_SCHEMA), deployment.k8s_executor_config()
        )
        assert processed.success, processed.errors
        executor = k8s_job_executor.executor_creation_fn(
            InitExecutorContext(
                job=recon_job,
                executor_def=k8s_job_executor,
                executor_config=processed.value,
                instance=instance,
            )
        )
        plan = create_execution_plan(recon_job, tags={"dagster/partition": "demo-a"})
        steps = sorted(plan.step_keys_to_execute)
        assert set(steps) > MODEL_JOB_GPU_STEPS
        assert {"concept_stats", "gen_features.gen_features_merge"} < set(steps)
        jobs = _step_jobs(instance, recon_job, executor, steps)
        pools = {s.key: s.pool for s in plan.steps}

    gpu_selector = json.loads(deployment_env["BLINDSPOT_GPU_NODE_SELECTOR"])
    cpu_selector = json.loads(deployment_env["BLINDSPOT_CPU_NODE_SELECTOR"])
    for step, (job, namespace) in jobs.items():
        assert namespace == "blindspot"
        pod = job.spec.template.spec
        (container,) = pod.containers
        resources = container.resources.to_dict()
        mounts = {m.mount_path for m in container.volume_mounts or []}
        assert "/data" in mounts, step  # the shared volume from the run launcher
        assert job.metadata.labels["dagster/op"] == step
        assert (pools[step] == "gpu") == (step in MODEL_JOB_GPU_STEPS), step
        if step in MODEL_JOB_GPU_STEPS:
            assert resources["limits"]["nvidia.com/gpu"] == "1", step
            assert resources["requests"]["nvidia.com/gpu"] == "1", step
            assert resources["requests"]["cpu"] == deployment_env["BLINDSPOT_GPU_STEP_CPU"]
            assert resources["limits"]["memory"] == deployment_env["BLINDSPOT_GPU_STEP_MEMORY"]
            assert pod.node_selector == gpu_selector, step
            assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations), step
        else:
            assert "nvidia.com/gpu" not in (resources.get("limits") or {}), step
            assert "nvidia.com/gpu" not in (resources.get("requests") or {}), step
            assert resources["requests"]["cpu"] == deployment_env["BLINDSPOT_CPU_REQUEST"]
            assert pod.node_selector == cpu_selector, step


def test_gpu_op_tags_are_valid_dagster_k8s_config(deployment_env):
    from dagster_k8s.job import get_user_defined_k8s_config

    for tags in (deployment.gpu_op_tags(), deployment.cpu_op_tags()):
        as_tags = {k: json.dumps(v) for k, v in tags.items()}
        parsed = get_user_defined_k8s_config(as_tags)
        assert parsed.container_config["resources"]["requests"]
    gpu = deployment.gpu_op_tags(gpus=2)
    assert gpu[deployment.DASK_RESOURCES_TAG] == {"GPU": 2}
    limits = gpu[deployment.K8S_CONFIG_TAG]["container_config"]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("BLINDSPOT_GPU_NODE_SELECTOR", "gpu=yes")
    with pytest.raises(ValueError, match="BLINDSPOT_GPU_NODE_SELECTOR must be JSON"):
        deployment.gpu_op_tags()
    monkeypatch.setenv("BLINDSPOT_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="multiprocess"):
        deployment.executor_from_env()

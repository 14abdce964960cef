"""Model checkpoints are an observable source whose data version is the resolved checkpoint
version; generated images record the version that made them, and a check flags a moved one."""

import dagster as dg
from dagster._core.definitions.observe import observe

from blindspot_assets.config import load_config
from blindspot_assets.defs.checks import generated_images_current_model
from blindspot_assets.defs.generation import generated_images, model_checkpoints
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.generators.registry import model_data_version
from blindspot_assets.store.images import read_lineage
from tests.conftest import demo_config_dict, write_config


def _observed(instance, partition):
    rec = instance.get_latest_data_version_record(
        dg.AssetKey("model_checkpoints"), is_source=True, partition_key=partition
    )
    return rec.event_log_entry.dagster_event.event_specific_data.asset_observation.tags[
        "dagster/data_version"
    ]


def test_model_version_is_observed_recorded_and_checked(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    raw = demo_config_dict(tmp_path, n_images=8)
    path = write_config(tmp_path, raw)
    resources = {"run_config": RunConfigResource(config_path=str(path))}

    assert observe([model_checkpoints], instance=instance, resources=resources).success
    version = model_data_version(load_config(path).model("demo-a"))
    assert _observed(instance, "demo-a") == version
    assert _observed(instance, "demo-b") != version

    dg.materialize([real_images], instance=instance, resources=resources)
    dg.materialize(
        [generated_images, real_images.to_source_asset(), model_checkpoints],
        selection=[generated_images],
        partition_key="demo-a",
        instance=instance,
        resources=resources,
    )
    cfg = load_config(path)
    assert read_lineage(cfg.layout.generated_images("demo-a"))["resolved_version"] == version
    assert generated_images_current_model(RunConfigResource(config_path=str(path))).passed

    raw["models"]["demo-a"]["exaggerate_rate"] = 0.5  # a new model version
    write_config(tmp_path, raw)
    observe([model_checkpoints], instance=instance, resources=resources)
    assert _observed(instance, "demo-a") != version
    check = generated_images_current_model(RunConfigResource(config_path=str(path)))
    assert not check.passed
    assert list(check.metadata["outdated_models"].value) == ["demo-a"]

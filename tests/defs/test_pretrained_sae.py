"""The sae asset can use the authors' released checkpoint (an overcomplete pickle) instead of
training: converted without executing the pickle, then used to encode the real features."""

import dagster as dg
import pytest
import torch

from blindspot_assets.config import load_config
from blindspot_assets.defs.concepts import real_concept_codes, sae
from blindspot_assets.defs.features import real_features
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae import MissingThresholdError, load_sae, read_header
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict, write_config
from tests.sae.test_released import NO_THRESHOLD, WITH_THRESHOLD, copy_release, expected


def _run(config_path, selection):
    return dg.materialize(
        [real_images, real_features, sae, real_concept_codes],
        selection=selection,
        instance=dg.DagsterInstance.ephemeral(),
        resources={"run_config": RunConfigResource(config_path=str(config_path))},
    )


def test_released_checkpoint_replaces_training(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=32)
    path = write_config(tmp_path, raw)
    assert _run(path, [real_images, real_features]).success
    cfg = load_config(path)
    d = RowStore.open(cfg.layout.features("real")).array("tokens").shape[2]
    assert d == 64  # the genuine fixture's width

    raw["sae"]["pretrained"] = str(copy_release(tmp_path, WITH_THRESHOLD, with_config_json=False))
    path = write_config(tmp_path, raw)
    result = _run(path, [sae, real_concept_codes])
    assert result.success
    model, header = load_sae(cfg.layout.sae)
    assert header["data_version"].startswith("released:")
    assert header["released"]["threshold_source"] == "pickled running_threshold"
    ref = expected("released_batchtopk")  # what the genuine overcomplete computed
    with torch.no_grad():
        codes = model.encode(ref["x"])
    torch.testing.assert_close(codes, ref["z"], atol=1e-6, rtol=1e-6)
    assert RowStore.open(cfg.layout.codes("real")).is_complete()


def test_released_checkpoint_threshold_and_width_are_checked(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=32)
    path = write_config(tmp_path, raw)
    assert _run(path, [real_images, real_features]).success
    # running_threshold = None and nothing gives θ: the asset fails, it does not fall back
    raw["sae"]["pretrained"] = str(copy_release(tmp_path, NO_THRESHOLD, with_config_json=False))
    path = write_config(tmp_path, raw)
    with pytest.raises(MissingThresholdError, match="no threshold θ is given"):
        _run(path, [sae])
    # sae.threshold reaches the import; then the 32-d checkpoint meets 64-d features
    raw["sae"]["threshold"] = 0.42
    path = write_config(tmp_path, raw)
    with pytest.raises(Exception, match="expects 32-d tokens but the features are 64-d"):
        _run(path, [sae])
    header = read_header(load_config(path).layout.sae)
    assert header["released"]["threshold_source"] == "run config sae.threshold"

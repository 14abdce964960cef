"""The sae asset can use the authors' released checkpoint (an overcomplete pickle) instead of
training: converted without executing the pickle, then used to encode the real features."""

import dagster as dg
import numpy as np
import pytest
import torch

from blindspot_assets.config import load_config
from blindspot_assets.defs.concepts import real_concept_codes, sae
from blindspot_assets.defs.features import real_features
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sae import load_sae
from blindspot_assets.store.rowstore import RowStore
from tests.conftest import demo_config_dict, write_config
from tests.sae.fake_overcomplete import write_fake_release


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
    tokens = RowStore.open(cfg.layout.features("real")).array("tokens")
    x_nd = torch.from_numpy(np.asarray(tokens[:8], dtype=np.float32).reshape(-1, tokens.shape[2]))
    expected = write_fake_release(tmp_path / "release.pth", x_nd)

    raw["sae"]["pretrained"] = str(tmp_path / "release.pth")
    path = write_config(tmp_path, raw)
    result = _run(path, [sae, real_concept_codes])
    assert result.success
    model, header = load_sae(cfg.layout.sae)
    assert header["data_version"].startswith("released:")
    with torch.no_grad():
        codes = model.encode(x_nd)
    torch.testing.assert_close(codes, expected["z"], atol=1e-4, rtol=1e-4)
    assert RowStore.open(cfg.layout.codes("real")).is_complete()


def test_pretrained_with_the_wrong_width_is_a_clear_error(tmp_path):
    raw = demo_config_dict(tmp_path, n_images=32)
    path = write_config(tmp_path, raw)
    assert _run(path, [real_images, real_features]).success
    write_fake_release(tmp_path / "release.pth", torch.randn(64, 12))
    raw["sae"]["pretrained"] = str(tmp_path / "release.pth")
    path = write_config(tmp_path, raw)
    with pytest.raises(Exception, match="expects 12-d tokens but the features are 64-d"):
        _run(path, [sae])

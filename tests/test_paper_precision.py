"""configs/paper.yaml runs at the authors' precision and compares SD 1.5 with its DPO variant;
configs/paper-fast.yaml is the same run in half precision; the feature store keeps float32 when
asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blindspot_assets.config import ConfigError, load_config, load_raw, parse_config
from blindspot_assets.store.layout import feature_arrays

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_paper_config_has_the_authors_precision_dpo_pair_and_ranking() -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    dtypes = {k: m.params["dtype"] for k, m in cfg.models.items()}
    assert dtypes == {
        "sd15": "float16",
        "sd15-dpo": "float16",
        "sd21": "float32",
        "pixart-alpha": "float32",
        "kandinsky21": "float32",
    }
    assert (cfg.encoder.dtype, cfg.encoder.store_dtype) == ("float32", "float32")
    assert cfg.stats.variant_pairs == (("sd15", "sd15-dpo"),)
    assert cfg.stats.top_images_by == "patch_mean"


def test_paper_fast_differs_only_in_precision() -> None:
    paper = load_raw(CONFIGS / "paper.yaml")
    fast = load_raw(CONFIGS / "paper-fast.yaml")  # its `extends: paper.yaml` resolved
    assert fast["name"] == "paper-fast" and fast["data_root"] != paper["data_root"]
    assert all(m["dtype"] == "float16" for m in fast["models"].values())
    assert fast["encoder"]["dtype"] == fast["encoder"]["store_dtype"] == "float16"
    for raw in (paper, fast):
        for key in ("name", "data_root"):
            raw.pop(key)
        for m in raw["models"].values():
            m.pop("dtype")
        raw["encoder"].pop("dtype")
        raw["encoder"].pop("store_dtype")
    assert paper == fast
    load_config(CONFIGS / "paper-fast.yaml")


def test_store_dtype_is_a_checked_option(tmp_path: Path) -> None:
    raw = {"name": "x", "data_root": str(tmp_path), "real": {"kind": "demo"},
           "models": {"m": {"family": "demo"}}}  # fmt: skip
    assert parse_config(raw).encoder.store_dtype == "float16"  # the demo's default
    with pytest.raises(ConfigError, match="encoder.store_dtype"):
        parse_config({**raw, "encoder": {"store_dtype": "int8"}})
    with pytest.raises(ConfigError, match="stats.top_images_by"):
        parse_config({**raw, "stats": {"top_images_by": "cls"}})
    assert feature_arrays(5, 8, "float32")["tokens"].dtype == "float32"
    assert np.dtype(feature_arrays(5, 8)["tokens"].dtype) == np.float16

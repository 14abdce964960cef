import pytest
import yaml

from blindspot_assets.config import ConfigError, load_config, parse_config
from tests.conftest import REPO, demo_config_dict


def test_embedded_demo_config_loads():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert list(cfg.models) == ["demo-a", "demo-b", "demo-a-v2", "control-copy", "control-redraw"]
    assert cfg.stats.compare == (("demo-a", "demo-a-v2"),)
    assert cfg.controls == ["control-copy", "control-redraw"]
    assert cfg.model("control-copy").params["real_images"] == str(cfg.layout.real_images)
    assert cfg.images.codec == "jpeg" and cfg.images.quality == 75
    assert cfg.stats.temperature == 0.8
    assert cfg.stats.suppressed_below == 0.1 and cfg.stats.exaggerated_above == 0.9
    assert cfg.data_root.is_absolute()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("models"), "lacks the required field 'models'"),
        (lambda r: r["models"].update({"x": {"suppress_colors": []}}), r"models\.x\.family"),
        (lambda r: r["models"].update({"bad key!": {"family": "demo"}}), "bad key"),
        (lambda r: r["sae"].update({"n_concept": 3}), r"unknown field\(s\) \['n_concept'\]"),
        (lambda r: r["stats"].update({"suppressed_below": 0.95}), "suppressed_below"),
        (lambda r: r["sae"].update({"train_on": "all"}), "train_on"),
        (lambda r: r.update({"extra": 1}), "unknown top-level"),
        (lambda r: r["real"].pop("kind"), "real.kind"),
        (lambda r: r.update({"images": {"codec": "webp"}}), r"images\.codec must be one of"),
        (lambda r: r.update({"images": {"quality": 100}}), r"images\.quality must be"),
        (lambda r: r.update({"images": {"qualty": 75}}), r"unknown field\(s\) \['qualty'\]"),
        (lambda r: r["models"].update({"c": {"family": "control", "control": False}}), "control"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, mutate, message):
    raw = demo_config_dict(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_unknown_model_key_lists_the_registered_ones(tmp_path):
    cfg = parse_config(demo_config_dict(tmp_path))
    with pytest.raises(ConfigError, match=r"unknown model 'sd15'.*demo-a"):
        cfg.model("sd15")


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_a_config_extends_another_key_by_key(tmp_path):
    base = demo_config_dict(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "base.yaml",
                "name": "child",
                "models": {"demo-a": {"exaggerate_rate": 0.5}},
            }
        )
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.name == "child" and list(cfg.models) == list(base["models"])
    assert cfg.model("demo-a").params["exaggerate_rate"] == 0.5
    assert cfg.model("demo-a").params["suppress_colors"] == ["red"]  # kept from the base
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**base, "extends": "child.yaml"}))
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "child.yaml")

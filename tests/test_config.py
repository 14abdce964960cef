import ast
import inspect
from dataclasses import fields

import pytest
import yaml

from blindspot_assets import config
from blindspot_assets.config import ConfigError, SAESpec, StatsSpec, load_config, parse_config
from blindspot_assets.config_fields import build, flat_dict, yaml_fields
from blindspot_assets.sae.config import RASAEConfig, TrainConfig
from blindspot_assets.stats.params import BlindspotParams
from tests.conftest import REPO, demo_config_dict


def test_embedded_demo_config_loads():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert list(cfg.models) == ["demo-a", "demo-b", "demo-a-v2", "control-copy", "control-redraw"]
    assert cfg.stats.compare == (("demo-a", "demo-a-v2"),)
    assert cfg.controls == ["control-copy", "control-redraw"]
    assert cfg.model("control-copy").params["real_images"] == str(cfg.layout.real_images)
    assert cfg.images.codec == "jpeg" and cfg.images.quality == 75
    assert cfg.stats.params.temperature == 0.8
    assert cfg.stats.params.suppressed_below == 0.1 and cfg.stats.params.exaggerated_above == 0.9
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


@pytest.mark.parametrize(
    ("block", "key", "nearest"),
    [
        ("sae", "n_concept", "n_concepts"),
        ("sae", "max_train_tokens", "max_tokens"),  # the old name of the token budget
        ("sae", "learning_rat", None),  # nothing close: no suggestion, the known fields
        ("stats", "temprature", "temperature"),
        ("images", "qualty", "quality"),
        (None, "stat", "stats"),
    ],
)
def test_a_mistyped_field_names_the_nearest_known_one(tmp_path, block, key, nearest):
    raw = demo_config_dict(tmp_path)
    (raw.setdefault(block, {}) if block else raw)[key] = 1
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    message = str(caught.value)
    assert f"['{key}']" in message and "known fields" in message or "allowed" in message
    if nearest:
        assert f"'{key}' → did you mean '{nearest}'?" in message
    else:
        assert "did you mean" not in message


def test_a_mistyped_choice_names_the_nearest_value(tmp_path):
    raw = demo_config_dict(tmp_path)
    raw["sae"]["sparsity"] = "batch_topk"
    with pytest.raises(ConfigError, match=r"sae\.sparsity must be one of \['topk', 'batchtopk'\]"
                       r", got 'batch_topk' \(did you mean 'batchtopk'\?\)"):  # fmt: skip
        parse_config(raw)


@pytest.mark.parametrize(
    ("block", "values", "library"),
    [
        ("sae", {"k": 0}, lambda: RASAEConfig(n_concepts=128, k=0)),
        ("sae", {"n_concepts": 4}, lambda: RASAEConfig(n_concepts=4, k=8)),  # the demo: k = 8
        ("sae", {"sparsity": "top"}, lambda: RASAEConfig(sparsity="top")),  # type: ignore[arg-type]
        ("sae", {"warmup_frac": 1.5}, lambda: TrainConfig(warmup_frac=1.5)),
        ("sae", {"amp_dtype": "fp8"}, lambda: TrainConfig(amp_dtype="fp8")),  # type: ignore[arg-type]
        ("stats", {"temperature": 0}, lambda: BlindspotParams(temperature=0)),
        ("stats", {"suppressed_below": 0.95}, lambda: BlindspotParams(suppressed_below=0.95)),
        ("stats", {"n_bootstrap": -1}, lambda: BlindspotParams(n_bootstrap=-1)),
    ],
)
def test_each_check_is_the_library_configs_own(tmp_path, block, values, library):
    """The run config validates a nested field once, in the library dataclass that owns it: its
    error is the library's message, placed in the block."""
    with pytest.raises(ConfigError) as direct:
        library()
    raw = demo_config_dict(tmp_path)
    raw[block].update(values)
    with pytest.raises(ConfigError) as through_config:
        parse_config(raw)
    assert str(through_config.value) == f"{block}.{direct.value}"


def test_library_configs_are_nested_not_copied(tmp_path):
    cfg = parse_config(demo_config_dict(tmp_path))
    assert isinstance(cfg.sae.model, RASAEConfig) and isinstance(cfg.sae.train, TrainConfig)
    assert isinstance(cfg.stats.params, BlindspotParams)
    # a field is defined in one dataclass: the run config's blocks hold none of the library's
    own = {f.name for spec in (SAESpec, StatsSpec) for f in fields(spec)}
    nested = {f.name for lib in (RASAEConfig, TrainConfig, BlindspotParams) for f in fields(lib)}
    assert not own & nested
    # the YAML block is the nested configs' fields written flat: it reads back to the same spec
    assert build(SAESpec, flat_dict(cfg.sae), "sae") == cfg.sae
    assert build(StatsSpec, flat_dict(cfg.stats), "stats") == cfg.stats
    assert cfg.sae.model.d == 0 and cfg.sae.model.sized(768).d == 768  # the encoder's width
    assert "d" not in yaml_fields(SAESpec)  # not the user's to write


def test_every_config_field_has_a_docstring():
    """Each field of the run config and of the library configs it nests is documented where it
    is defined (a string right after it), so the config reference is the code."""
    classes = [c for c in vars(config).values() if inspect.isclass(c) and c.__name__ in
               {"SourceSpec", "ModelSpec", "EncoderSpec", "ImagesSpec", "SAESpec", "StatsSpec",
                "ScaleSpec", "LabelsSpec", "RunConfig"}]  # fmt: skip
    classes += [RASAEConfig, TrainConfig, BlindspotParams]
    undocumented = []
    for cls in classes:
        body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
        for stmt, after in zip(body, [*body[1:], None], strict=True):
            if isinstance(stmt, ast.AnnAssign):
                documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                if not documented:
                    undocumented.append(f"{cls.__name__}.{ast.unparse(stmt.target)}")
    assert len(classes) == 12 and undocumented == []


@pytest.mark.parametrize(
    ("block", "values", "message"),
    [
        ("sae", {"k": "many"}, r"sae\.k must be an integer, got 'many'"),
        ("sae", {"lr": "fast"}, r"sae\.lr must be a number, got 'fast'"),
        (
            "sae",
            {"max_tokens": 1.5e6},
            r"sae\.max_tokens must be an integer or null, got 1500000\.0",
        ),
        ("stats", {"alpha": True}, r"stats\.alpha must be a number, got True"),
        ("encoder", {"device": 0}, r"encoder\.device must be a string, got 0"),
        ("labels", {"crop": "yes"}, r"labels\.crop must be true or false, got 'yes'"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_field(tmp_path, block, values, message):
    raw = demo_config_dict(tmp_path)
    raw.setdefault(block, {}).update(values)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_an_integer_is_a_number_and_null_is_allowed_where_optional(tmp_path):
    raw = demo_config_dict(tmp_path)
    raw["sae"].update({"lr": 1, "max_tokens": None, "aux_k": None})
    raw["stats"].update({"alpha": 0})
    with pytest.raises(ConfigError, match=r"stats\.alpha must be in \(0, 1\), got 0"):
        parse_config(raw)  # the type passes; the range is the field's own check
    raw["stats"].update({"alpha": 0.05})
    cfg = parse_config(raw)
    assert cfg.sae.train.lr == 1 and cfg.sae.train.max_tokens is None

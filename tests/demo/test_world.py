import numpy as np
import pytest

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.demo.world import (
    COLORS,
    Plants,
    caption_of,
    parse_caption,
    render,
    sample_scene,
)
from blindspot_assets.generators.base import GenerationRequest
from blindspot_assets.generators.demo import build


def _color_fraction(img, rgb, tol=40):
    arr = np.asarray(img).astype(int)
    return float((np.abs(arr - np.array(rgb)).sum(axis=2) < tol).mean())


def test_caption_round_trips_through_the_parser():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng)
        parsed = parse_caption(caption_of(scene))
        assert parsed.objects == scene.objects
        assert parsed.background == scene.background


def test_render_is_deterministic_and_draws_the_colours_it_is_asked_for():
    scene = parse_caption("two red circles and a blue square on a plain background")
    a, b = render(scene, 3), render(scene, 3)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert _color_fraction(a, COLORS["red"]) > 0.01
    assert _color_fraction(a, COLORS["blue"]) > 0.01
    assert _color_fraction(a, COLORS["green"]) == 0


def test_planted_model_never_draws_its_suppressed_colour_and_overdraws_its_background():
    gen = build(
        ModelSpec(
            "m",
            "demo",
            {
                "suppress_colors": ["red"],
                "exaggerate_background": "striped",
                "exaggerate_rate": 1.0,
            },
        )
    )
    reqs = [
        GenerationRequest(f"i{i}", "two red circles and a green square on a plain background", i)
        for i in range(5)
    ]
    for img in gen.generate(reqs):
        assert _color_fraction(img, COLORS["red"]) == 0
        assert _color_fraction(img, COLORS["green"]) > 0.01
    truth = gen.lineage()["planted_truth"]
    assert truth["suppressed"] == ["red"]
    assert truth["exaggerated"] == ["striped"]
    faithful = build(ModelSpec("f", "demo", {}))
    img = faithful.generate(reqs[:1])[0]
    assert _color_fraction(img, COLORS["red"]) > 0.01


def test_unknown_plant_is_a_config_error_naming_the_model():
    with pytest.raises(ConfigError, match=r"models\.bad.*magenta"):
        build(ModelSpec("bad", "demo", {"suppress_colors": ["magenta"]}))
    with pytest.raises(ConfigError, match=r"'demo' family \(did you mean 'suppress_colors'\?\)"):
        build(ModelSpec("bad", "demo", {"supress_colors": ["red"]}))


def test_plants_validate_values():
    with pytest.raises(ValueError, match="background"):
        Plants(exaggerate_background="wood")

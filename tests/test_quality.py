"""``controls_outcome``, the verdict of the asset check ``controls_clean`` and of the demo
summary's last line: what counts as an artefact on a control, and the nuisance probe in it."""

from __future__ import annotations

import polars as pl

from blindspot_assets.config import parse_config
from blindspot_assets.quality import PROBE, controls_outcome
from blindspot_assets.store.tables import write_table_partition
from tests.conftest import demo_config_dict


def _flags(cfg, model, paper: list[bool], significant: list[bool]) -> None:
    n = len(paper)
    table = pl.DataFrame(
        {"concept": list(range(n)), "paper_verdict": paper, "significant": significant}
    )
    write_table_partition(cfg.layout.tables, "blindspots", model, table)


def _probe(cfg, history_flags: int) -> None:
    rows = [("history", c, c < history_flags) for c in range(8)] + [("blur", 0, True)]
    table = pl.DataFrame(rows, schema=["nuisance", "concept", "significant"], orient="row")
    write_table_partition(cfg.layout.tables, "nuisance_effects", "all", table)


def test_controls_fail_on_a_significant_flag_and_report_delta_only_flags(tmp_path):
    cfg = parse_config(demo_config_dict(tmp_path, with_controls=True))
    assert cfg.controls == ["control-copy", "control-redraw"]
    assert not controls_outcome(cfg).passed  # nothing materialised yet: unverified
    _flags(cfg, "control-copy", [False], [False])
    _flags(cfg, "control-redraw", [True, False], [False, False])
    outcome = controls_outcome(cfg)
    assert outcome.passed, outcome.description
    assert "δ verdict alone" in outcome.description and "control-redraw" in outcome.description
    _flags(cfg, "control-redraw", [False, False], [False, True])
    outcome = controls_outcome(cfg)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert "control-redraw flags 1 significant" in outcome.description


def test_the_probe_history_arm_is_a_control_and_its_blur_arm_is_not(tmp_path):
    raw = demo_config_dict(tmp_path)  # no control model registered
    cfg = parse_config(raw)
    assert cfg.controls == []
    outcome = controls_outcome(cfg)
    assert not outcome.passed and outcome.severity == "WARN"  # no control at all
    _probe(cfg, 0)  # the blur arm flags a concept: a sensitivity, not an artefact
    outcome = controls_outcome(cfg)
    assert outcome.passed and outcome.metadata["flags_per_control"] == {
        PROBE: {"paper_verdict": 0, "significant": 0}
    }
    _probe(cfg, 3)
    outcome = controls_outcome(cfg)
    assert not outcome.passed and outcome.severity == "ERROR" and PROBE in outcome.description


def test_paired_check_wants_every_sample_of_every_caption(tmp_path):
    """``generated_images_paired`` with two images per caption: a set missing sample 1 of one
    caption is unpaired by one image."""
    from blindspot_assets.quality import generated_paired_outcome
    from blindspot_assets.store.images import write_manifest

    cfg = parse_config(demo_config_dict(tmp_path, images_per_caption=2))
    ids = ["a", "b"]
    rows = {"path": ["", ""], "caption": ["x", "y"], "status": ["ok", "ok"], "detail": ["", ""]}
    cfg.layout.real_images.mkdir(parents=True)
    write_manifest(cfg.layout.real_images, pl.DataFrame({"image_id": ids, **rows}))
    gen = cfg.layout.generated_images("demo-a")
    gen.mkdir(parents=True)
    three = {k: [*v, v[0]] for k, v in rows.items()}
    write_manifest(gen, pl.DataFrame({"image_id": ["a", "b", "a~s1"], **three}))
    outcome = generated_paired_outcome(cfg)
    assert not outcome.passed and outcome.metadata["unpaired"] == {"demo-a": 1}

"""The paper's formulas, checked to the bit on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blindspot_assets.config import StatsSpec
from blindspot_assets.config_fields import build
from blindspot_assets.stats import BlindspotParams, benjamini_hochberg, blindspot_scores


def test_scores_match_the_formulas_bit_for_bit() -> None:
    gen = [1.6, 0.0, 0.0, 2.0, 0.3]
    real = [0.0, 1.6, 0.0, 2.0, 0.7]
    out = blindspot_scores(gen, real, temperature=0.8)
    for k, (g, r) in enumerate(zip(gen, real, strict=True)):
        d = g - r
        assert out["delta_energy"][k] == d
        assert out["delta"][k] == 1.0 / (1.0 + math.exp(-d / 0.8))
        assert out["relative"][k] == (0.0 if g + r == 0 else d / (g + r))
    # the readable values: ±1.6 / 0.8 = ±2, a concept gone / appearing is relative ∓1
    assert out["delta"][0] == 1.0 / (1.0 + math.exp(-2.0))
    assert out["relative"].tolist()[:4] == [1.0, -1.0, 0.0, 0.0]
    assert out["delta"][2] == 0.5  # 0/0 concept: no difference


def test_delta_saturates_without_overflow_warnings() -> None:
    with np.errstate(all="raise"):
        out = blindspot_scores([0.0, 1e4], [1e4, 0.0], temperature=0.8)
    assert out["delta"].tolist() == [0.0, 1.0]


def test_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        blindspot_scores([1.0], [1.0, 2.0], 0.8)
    with pytest.raises(ValueError, match="temperature"):
        blindspot_scores([1.0], [1.0], 0.0)


def test_benjamini_hochberg_hand_case() -> None:
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.5, np.nan])
    # sorted p: .01 .03 .04 .5 → p·m/rank: .04 .06 .0533 .5 → running min from the top
    assert q[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5], rel=1e-15)
    assert np.isnan(q[4])


def test_the_stats_block_nests_the_params() -> None:
    raw = {"temperature": 0.5, "alpha": 0.1, "n_bootstrap": 10, "top_images": 3, "seed": 7}
    spec = build(StatsSpec, {**raw, "block_rows": 16, "label_terms": 2}, "stats")
    params = spec.params
    assert (params.temperature, params.alpha, params.n_bootstrap, params.seed) == (0.5, 0.1, 10, 7)
    assert params.block_rows == 16 and spec.label_terms == 2
    assert params.suppressed_below == BlindspotParams().suppressed_below
    with pytest.raises(ValueError, match="suppressed_below"):
        BlindspotParams(suppressed_below=0.9, exaggerated_above=0.1)

"""The significance verdict needs q < α and a meaningful change: a rare concept that is gone
stays flagged (relative = −1 although |d_z| is small); a tiny but 'significant' shift is not."""

import polars as pl

from blindspot_assets.config import StatsSpec
from blindspot_assets.stats import BlindspotParams, flag_blindspots


def _stats(rows: list[dict[str, float]]) -> pl.DataFrame:
    base = {
        "n_pairs": 2000,
        "energy_real": 1.0,
        "energy_gen": 1.0,
        "image_freq_real": 0.5,
        "delta_energy_ci_low": 0.0,
        "delta_energy_ci_high": 0.0,
        "p_value": 0.0,
    }
    return pl.DataFrame([{**base, **r} for r in rows])


def test_gone_rare_concept_is_significant_but_a_tiny_shift_is_not() -> None:
    params = BlindspotParams.from_spec(StatsSpec())
    stats = _stats(
        [
            # fires in 5% of images, gone from every generation: δ ≈ 0.42, d_z ≈ −0.18
            {
                "concept": 0,
                "delta": 0.42,
                "delta_energy": -0.25,
                "relative": -1.0,
                "effect_size": -0.18,
                "q_value": 2e-13,
            },
            # a common concept nudged by 3%: q tiny with many pairs, effect negligible
            {
                "concept": 1,
                "delta": 0.49,
                "delta_energy": -0.03,
                "relative": -0.015,
                "effect_size": -0.08,
                "q_value": 1e-6,
            },
            # a clear medium effect
            {
                "concept": 2,
                "delta": 0.7,
                "delta_energy": 0.7,
                "relative": 0.3,
                "effect_size": 0.6,
                "q_value": 1e-9,
            },
            # large but noisy: not significant, not beyond the paper's thresholds
            {
                "concept": 3,
                "delta": 0.8,
                "delta_energy": 1.1,
                "relative": 0.4,
                "effect_size": 0.9,
                "q_value": 0.2,
            },
        ]
    )
    flagged = flag_blindspots(stats, params)
    by_concept = {r["concept"]: r for r in flagged.iter_rows(named=True)}
    assert set(by_concept) == {0, 2}
    assert by_concept[0]["kind"] == "suppressed"
    assert by_concept[0]["significant"]
    assert not by_concept[0]["paper_verdict"]
    assert by_concept[2]["kind"] == "exaggerated"

    loose = BlindspotParams.from_spec(StatsSpec(), min_effect_size=0.0, min_relative=0.0)
    assert 1 in set(flag_blindspots(stats, loose)["concept"])

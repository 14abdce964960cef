"""Shard summaries add up: counts and count tables sum, seconds are GPU-seconds, rates are
recomputed from the sums, what every shard shares is the first shard's."""

import pytest

from blindspot_assets.encoders.dinov2 import ExtractionSummary
from blindspot_assets.generators.runner import GenerationSummary
from blindspot_assets.shards import CodeShards, FeatureShards, GenerationShards


def test_feature_shards_merge_to_the_whole_store():
    parts = [
        FeatureShards.of(ExtractionSummary(64, 62, 64, {"decode_error": 2}, 2.0, 32.0), {"e": 1}),
        FeatureShards.of(ExtractionSummary(36, 35, 10, {"decode_error": 1, "empty": 0}, 3.0, 3.3),
                         {"e": 1}),
    ]  # fmt: skip
    whole = FeatureShards.merge(parts)
    assert (whole.n_rows, whole.n_valid, whole.n_computed) == (100, 97, 74)
    assert whole.n_invalid_by_status == {"decode_error": 3, "empty": 0}
    assert whole.seconds == 5.0 and whole.images_per_s == pytest.approx(74 / 5.0)
    assert whole.lineage == {"e": 1}


def test_code_shards_recompute_mean_l0_from_the_sums():
    summary = {
        "rows": 10,
        "valid_rows": 9,
        "rows_computed": 10,
        "tokens_encoded": 100,
        "l0_sum": 800,
        "tokens_over_k_max": 1,
        "seconds": 1.0,
        "sae_fingerprint": "f",
    }
    other = {**summary, "tokens_encoded": 300, "l0_sum": 600, "seconds": 3.0}
    whole = CodeShards.merge([CodeShards.of(summary, "v1"), CodeShards.of(other, "v1")])
    assert whole.tokens_encoded == 400 and whole.mean_l0 == pytest.approx(1400 / 400)
    assert whole.tokens_per_s == pytest.approx(100.0)
    assert whole.as_dict()["sae_data_version"] == "v1" and whole.as_dict()["rows"] == 20


def test_generation_shards_add_failures_by_reason():
    a = GenerationSummary(8, 6, 1, 1, 4.0, {"nsfw": 1})
    b = GenerationSummary(8, 5, 0, 3, 6.0, {"nsfw": 2, "oom": 1})
    whole = GenerationShards.merge([GenerationShards.of(a, {"g": 1}), GenerationShards.of(b, {})])
    assert whole.counts() == {"n_images": 16, "n_generated": 11, "n_reused": 1, "n_failed": 4}
    assert whole.failures_by_reason == {"nsfw": 3, "oom": 1} and whole.lineage == {"g": 1}
    with pytest.raises(ValueError, match="no shard summary"):
        GenerationShards.merge([])

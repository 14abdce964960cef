"""Blindspot statistics: energy and δ, uncertainty, datapoints, memorisation, labels, scoring.

A plain library (no Dagster): every function reads row stores / frames and returns arrays or
polars frames, streaming over row blocks so nothing holds all codes or features.
"""

from blindspot_assets.stats.concepts import compute_concept_stats, flag_blindspots
from blindspot_assets.stats.datapoints import compute_datapoint_deltas
from blindspot_assets.stats.energy import concept_energy
from blindspot_assets.stats.labels import label_concepts, top_label
from blindspot_assets.stats.memorization import find_memorization_candidates
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.planted import planted_summary_frame, score_planted
from blindspot_assets.stats.reading import Pairing, pair_rows
from blindspot_assets.stats.reconstruction import reconstruction_quality
from blindspot_assets.stats.replication import replication
from blindspot_assets.stats.scores import benjamini_hochberg, blindspot_scores
from blindspot_assets.stats.significance import expected_false_flags, minimum_effect_p_values
from blindspot_assets.stats.summaries import (
    compare_variants,
    delta_histogram,
    frequency_vs_relative,
    l2_histograms,
    model_summaries,
    relative_correlations,
)
from blindspot_assets.stats.top_images import top_images_per_concept

__all__ = [
    "BlindspotParams",
    "Pairing",
    "benjamini_hochberg",
    "blindspot_scores",
    "compare_variants",
    "compute_concept_stats",
    "concept_energy",
    "label_concepts",
    "compute_datapoint_deltas",
    "delta_histogram",
    "expected_false_flags",
    "flag_blindspots",
    "frequency_vs_relative",
    "l2_histograms",
    "find_memorization_candidates",
    "minimum_effect_p_values",
    "model_summaries",
    "pair_rows",
    "planted_summary_frame",
    "reconstruction_quality",
    "replication",
    "relative_correlations",
    "score_planted",
    "top_images_per_concept",
    "top_label",
]

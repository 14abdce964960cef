"""Blindspot statistics: energy and δ, uncertainty, datapoints, memorisation, labels, scoring.

A plain library (no Dagster): every function reads row stores / frames and returns arrays or
polars frames, streaming over row blocks so nothing holds all codes or features.
"""

from blindspot_assets.stats.concepts import (
    compute_concept_stats,
    flag_blindspots,
    top_images_per_concept,
)
from blindspot_assets.stats.energy import concept_energy
from blindspot_assets.stats.params import BlindspotParams
from blindspot_assets.stats.reading import Pairing, pair_rows
from blindspot_assets.stats.scores import benjamini_hochberg, blindspot_scores

__all__ = [
    "BlindspotParams",
    "Pairing",
    "benjamini_hochberg",
    "blindspot_scores",
    "compute_concept_stats",
    "concept_energy",
    "flag_blindspots",
    "pair_rows",
    "top_images_per_concept",
]

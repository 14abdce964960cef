"""Jobs: the whole graph in one run, per-model backfills, and the real-data side alone."""

from __future__ import annotations

import dagster as dg

from blindspot_assets.defs.partitions import model_partitions

# Everything: real side once, every model in the run's partition range, then the report.
blindspot_job = dg.define_asset_job("blindspot_job", selection=dg.AssetSelection.all())

# Per-model work only, for backfills over model partitions (one run per model or a range).
model_job = dg.define_asset_job(
    "model_job",
    selection=dg.AssetSelection.assets(
        "generated_images",
        "gen_features",
        "concept_codes",
        "concept_stats",
        "blindspots",
        "datapoint_deltas",
        "memorization_candidates",
        "blindspot_verification",
        "blindspot_changes",
    ),
)

# Real images → features → SAE → real codes and concept names, with no model partition: run it
# once, then backfill model_job over the models (the SAE is trained on the real features).
real_job = dg.define_asset_job(
    "real_job",
    selection=dg.AssetSelection.assets(
        "real_images",
        "real_features",
        "sae",
        "real_concept_codes",
        "concept_labels",
        "nuisance_probe",
    ),
)

# Cross-model tables and the report, after the model partitions are in.
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets(
        "concept_top_images", "concept_names", "model_comparison", "report"
    ),
)

__all__ = ["blindspot_job", "model_job", "model_partitions", "real_job", "report_job"]

"""Every asset check of the code location, in one place: each evaluates a library function of
``blindspot_assets/quality.py`` over what its asset wrote (image folders, row stores, the SAE
header, the Parquet partitions), so it can run again at any time from the UI. Checks over a
partitioned asset look at every model whose output exists and name the failing models.
"""

from collections.abc import Callable

import dagster as dg

from blindspot_assets import quality
from blindspot_assets.config import RunConfig
from blindspot_assets.defs.analysis import blindspots, concept_stats
from blindspot_assets.defs.changes import TABLE as CHANGES_TABLE
from blindspot_assets.defs.changes import blindspot_changes
from blindspot_assets.defs.concepts import sae
from blindspot_assets.defs.features import gen_features, real_features
from blindspot_assets.defs.generation import generated_images
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.metadata import check_result
from blindspot_assets.defs.partitions import comparison_key
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.stats.run_tables import comparisons

Result = dg.AssetCheckResult
Outcome = Callable[[RunConfig], quality.CheckOutcome]


def _check(
    asset: dg.AssetsDefinition, name: str, description: str, outcome: Outcome
) -> dg.AssetChecksDefinition:
    """An asset check named ``name`` whose verdict is ``outcome(run config)``."""

    @dg.asset_check(asset=asset, name=name, description=description)
    def check(run_config: RunConfigResource) -> Result:
        return check_result(outcome(run_config.load()))

    return check


real_images_complete = _check(
    real_images,
    "real_images_complete",
    "Every manifest row is an image on disk or a recorded failure; ids are unique.",
    lambda cfg: quality.real_images_outcome(cfg.layout.real_images),
)
generated_images_paired = _check(
    generated_images,
    "generated_images_paired",
    "Every usable real image has a generated partner or a recorded failure.",
    quality.generated_paired_outcome,
)
generated_images_current_model = _check(
    generated_images,
    "generated_images_current_model",
    "Each model's generated images were made by the checkpoint version the model entry "
    "resolves to now; fails (naming the models) when a revision moved since.",
    quality.generated_current_outcome,
)
real_features_finite = _check(
    real_features,
    "real_features_finite",
    "Features finite, complete, (N, T, d).",
    quality.real_features_outcome,
)
gen_features_finite_and_shaped = _check(
    gen_features,
    "gen_features_finite_and_shaped",
    "Every model's features: finite, complete, one row per generated-manifest row, and the "
    "same (tokens, dim) as the real features (same encoder).",
    quality.gen_features_outcome,
)
sae_quality_in_bounds = _check(
    sae,
    "sae_quality_in_bounds",
    f"SAE quality from its header metrics (held-out tokens): R² ≥ {quality.SAE_MIN_R2} and "
    f"dead-concept fraction ≤ {quality.SAE_MAX_DEAD_FRACTION}. Warns; does not block.",
    lambda cfg: quality.sae_quality_outcome(cfg.layout.sae),
)
concept_stats_schema = _check(
    concept_stats,
    "concept_stats_schema",
    "concept_stats partitions: documented columns and types, one row per concept, δ in "
    "[0, 1], model_key matching the partition.",
    lambda cfg: quality.table_outcome(cfg, "concept_stats"),
)
blindspots_schema = _check(
    blindspots,
    "blindspots_schema",
    "blindspots partitions: documented columns and types, kind ∈ {suppressed, exaggerated}, "
    "boolean verdicts, model_key matching the partition.",
    lambda cfg: quality.table_outcome(cfg, "blindspots"),
)
controls_clean = _check(
    blindspots,
    "controls_clean",
    "Null controls are clean: a control model (family control, or control: true) has no "
    "blindspot by construction, so any concept flagged on it — by either verdict — is a "
    "pipeline artefact, and the other models' flags cannot be trusted until it is explained.",
    quality.controls_outcome,
)


@dg.asset_check(
    asset=blindspot_changes,
    description="The blindspot gate: fails when a comparison of stats.compare has a regression "
    "(stats.fail_on, default new-suppressed, new-exaggerated, worsened) or was not computed.",
)
def blindspot_changes_gate(run_config: RunConfigResource) -> Result:
    cfg = run_config.load()
    keys = [comparison_key(base, candidate) for base, candidate in comparisons(cfg)]
    return check_result(quality.changes_gate_outcome(cfg, CHANGES_TABLE, keys))

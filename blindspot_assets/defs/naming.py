"""Stage 5 — analysis: concept names from a vision-language model (table concept_names).

Off unless the run config names a labeller (``labels.model_id``); the asset then records why it
did nothing and leaves an empty table, so no names from an earlier labeller outlive its config.
"""

from typing import Any

import dagster as dg

from blindspot_assets.defs.analysis import blindspots, concept_top_images
from blindspot_assets.defs.declare import config_of, stage_asset
from blindspot_assets.defs.metadata import lineage_md, progress_logger, table_md
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.labels.run_names import SKIPPED, name_concepts_of_run


@stage_asset(
    group="analysis",
    runs_on="gpu",
    deps=[concept_top_images, blindspots],
    kinds={"pytorch", "duckdb"},
    reads=("labels", "models", "encoder", "images"),
    description="Concept names from a vision-language / captioning model (`labels.model_id`, "
    "off by default): each concept's top real images, cropped to where it fires, captioned "
    "and reduced to a short name (table concept_names).",
)
def concept_names(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult[Any]:
    cfg = config_of(context, run_config)
    named = name_concepts_of_run(
        cfg, context.run.run_id, context.log.info, progress_logger(context, "concept names")
    )
    if named.captioner is None:
        context.log.info(SKIPPED)
        return dg.MaterializeResult(metadata={"skipped": SKIPPED, "n_concepts": 0})
    return dg.MaterializeResult(
        metadata={
            **named.metadata,
            "labeller": lineage_md(named.captioner),
            "preview": table_md(named.names.select("concept", "name", "n_images", "model_version")),
        }
    )

"""Stage 5 — analysis: concept names from a vision-language model (table concept_names).

Off unless the run config names a labeller (``labels.model_id``); the asset then records why it
did nothing and leaves an empty table, so no names from an earlier labeller outlive its config.
"""

import dagster as dg
import polars as pl

from blindspot_assets.defs.analysis import blindspots, concept_top_images, sae_version
from blindspot_assets.defs.common import lineage_md, progress_logger, table_md
from blindspot_assets.defs.deployment import GPU_OP_TAGS
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.labels.naming import empty_names, name_run_concepts
from blindspot_assets.store.tables import refresh_views, write_table_partition

SKIPPED = (
    "labels.model_id is 'none': no labeller configured, no concept named. Set labels.model_id "
    "to a captioning or vision-language checkpoint (hub id or local folder; README: Concept "
    "names) to name the concepts from their top images."
)


@dg.asset(
    group_name="analysis",
    deps=[concept_top_images, blindspots],
    kinds={"pytorch", "duckdb"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="Concept names from a vision-language / captioning model (`labels.model_id`, "
    "off by default): each concept's top real images, cropped to where it fires, captioned "
    "and reduced to a short name (table concept_names).",
)
def concept_names(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    tables = cfg.layout.tables
    if not cfg.labels.enabled:
        write_table_partition(tables, "concept_names", "all", empty_names())
        refresh_views(cfg.layout.duckdb, tables)
        context.log.info(SKIPPED)
        return dg.MaterializeResult(metadata={"skipped": SKIPPED, "n_concepts": 0})
    from blindspot_assets.labels.vlm import load_captioner

    captioner = load_captioner(cfg.labels)
    context.log.info(f"labeller {cfg.labels.model_id} at {captioner.version} on {captioner.device}")
    names, meta = name_run_concepts(cfg, captioner, progress_logger(context, "concept names"))
    names = names.with_columns(
        pl.lit(sae_version(cfg.layout.sae)).alias("sae_version"),
        pl.lit(context.run.run_id).alias("run_id"),
    )
    write_table_partition(tables, "concept_names", "all", names)
    refresh_views(cfg.layout.duckdb, tables)
    return dg.MaterializeResult(
        metadata={
            **meta,
            "labeller": lineage_md(captioner.lineage()),
            "preview": table_md(names.select("concept", "name", "n_images", "model_version")),
        }
    )

"""Stage 5b — confirm flagged blindspots: prompt each model again (``stats/verification.py``,
called through ``stats/run_tables.verify_model``)."""

from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.analysis import (
    blindspots,
    concept_labels,
    concept_top_images,
    per_model_tables,
)
from blindspot_assets.defs.concepts import sae
from blindspot_assets.defs.declare import config_of, stage_asset
from blindspot_assets.defs.features import run_encoder
from blindspot_assets.defs.generation import generated_images
from blindspot_assets.defs.metadata import progress_logger, table_md
from blindspot_assets.defs.partitions import model_keys
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.stats.run_tables import verify_model
from blindspot_assets.stats.verification import VerificationParams


def _verify(
    context: dg.AssetExecutionContext, cfg: RunConfig, model_key: str, meta: dict[str, Any]
) -> pl.DataFrame:
    progress = progress_logger(context, f"verification images {model_key}")
    table, meta[model_key] = verify_model(cfg, model_key, lambda: run_encoder(cfg), progress)
    return table


@stage_asset(
    group="analysis",
    per_model=True,
    runs_on="gpu",
    deps=[blindspots, concept_top_images, concept_labels, sae, generated_images],
    kinds={"pytorch", "duckdb"},
    reads=("models", "stats", "encoder", "images", "seed", "sae"),
    description="Confirm flagged blindspots: the top `stats.verify_top` significant concepts of "
    "each kind, `stats.verify_images` new images for each of `stats.verify_captions` captions "
    "(new seeds, same generator and image pipeline), tested against the real images: "
    "confirmed / not_confirmed / inconclusive (table blindspot_verification). Pre-generated "
    "sets and null controls are skipped with a reason.",
)
def blindspot_verification(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult[Any]:
    cfg = config_of(context, run_config)
    meta: dict[str, Any] = {}
    keys = model_keys(context)
    written = per_model_tables(
        context, cfg, "blindspot_verification", lambda m: _verify(context, cfg, m, meta)
    )
    first = written[keys[0]]
    return dg.MaterializeResult(
        metadata={
            "per_model": dg.MetadataValue.json(meta),
            "max_generations_per_model": VerificationParams.from_spec(cfg.stats).max_generations,
            "preview": table_md(
                first.select("concept", "kind", "status", "n_captions", "relative", "q_value")
            ),
        }
    )

"""Stage 5b — confirm flagged blindspots: prompt each model again (``stats/verification.py``)."""

from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.analysis import (
    _write_per_model,
    blindspots,
    concept_labels,
    concept_top_images,
)
from blindspot_assets.defs.common import progress_logger, table_md
from blindspot_assets.defs.concepts import sae
from blindspot_assets.defs.deployment import GPU_OP_TAGS
from blindspot_assets.defs.features import _encoder
from blindspot_assets.defs.generation import _batch_size, generated_images
from blindspot_assets.defs.partitions import model_keys, model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.devices import choose_device
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.sae.checkpoint import load_sae
from blindspot_assets.stats import verification as lib
from blindspot_assets.stats.top_images import top_images
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.tables import read_table


def skip_reason(cfg: RunConfig, model_key: str) -> str | None:
    """Why a model is not prompted again, or None."""
    spec = cfg.model(model_key)
    if spec.family == "pregenerated":
        return "pre-generated set: there is no generator to prompt again"
    if spec.control:
        return "null control: it has no blindspot to confirm by construction"
    return None


def _top_images(cfg: RunConfig, model_key: str) -> pl.DataFrame:
    """``concept_top_images`` of the real set and the model; computed from the codes (the same
    function) where the table has no partition yet (a model_job backfill before report_job)."""
    frames = []
    for dataset in (REAL, model_key):
        try:
            frames.append(read_table(cfg.layout.tables, "concept_top_images", dataset))
        except FileNotFoundError:
            top = top_images(
                cfg.layout.codes(dataset), cfg.stats.params.top_images, cfg.stats.top_images_by
            )
            frames.append(top.with_columns(pl.lit(dataset).alias("dataset")))
    return pl.concat(frames, how="diagonal_relaxed")


def _labels(cfg: RunConfig) -> pl.DataFrame | None:
    try:
        return read_table(cfg.layout.tables, "concept_labels")
    except FileNotFoundError:
        return None


def _verify(
    context: dg.AssetExecutionContext, cfg: RunConfig, model_key: str, meta: dict[str, Any]
) -> pl.DataFrame:
    params = lib.VerificationParams.from_spec(cfg.stats)
    flagged = read_table(cfg.layout.tables, "blindspots", model_key)
    reason = skip_reason(cfg, model_key)
    if reason is not None:
        meta[model_key] = {"skipped": reason}
        return lib.skipped_rows(lib.concepts_to_verify(flagged, params.top), reason)
    spec = cfg.model(model_key)
    model, _ = load_sae(cfg.layout.sae, device=choose_device("auto"))
    run = lib.run_verification(
        model_key=model_key,
        blindspots=flagged,
        top_images=_top_images(cfg, model_key),
        labels=_labels(cfg),
        real_manifest=read_manifest(cfg.layout.real_images),
        real_codes=cfg.layout.codes(REAL),
        generator=build_generator(spec),
        encoder=_encoder(cfg),
        sae=model,
        k_max=cfg.sae.k_max_store,
        image_dir=cfg.layout.verification_images(model_key),
        features_path=cfg.layout.verification_store(model_key, "features"),
        codes_path=cfg.layout.verification_store(model_key, "codes"),
        params=params,
        base_seed=int(spec.params.get("seed", cfg.seed)),
        batch_size=_batch_size(cfg, model_key),
        progress=progress_logger(context, f"verification images {model_key}"),
    )
    meta[model_key] = {
        "n_concepts": run.n_concepts,
        "n_images_requested": run.n_requested,
        "n_generated_now": run.n_generated,
        "n_failed": run.n_failed,
        "seconds": round(run.seconds, 2),
        **dict(run.table.group_by("status").len().iter_rows()),
    }
    return run.table


@dg.asset(
    group_name="analysis",
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[blindspots, concept_top_images, concept_labels, sae, generated_images],
    kinds={"pytorch", "duckdb"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="Confirm flagged blindspots: the top `stats.verify_top` significant concepts of "
    "each kind, `stats.verify_images` new images for each of `stats.verify_captions` captions "
    "(new seeds, same generator and image pipeline), tested against the real images: "
    "confirmed / not_confirmed / inconclusive (table blindspot_verification). Pre-generated "
    "sets and null controls are skipped with a reason.",
)
def blindspot_verification(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    meta: dict[str, Any] = {}
    written = _write_per_model(
        context, cfg, "blindspot_verification", lambda m: _verify(context, cfg, m, meta)
    )
    keys = model_keys(context)
    first = written[keys[0]]
    return dg.MaterializeResult(
        metadata={
            "per_model": dg.MetadataValue.json(meta),
            "max_generations_per_model": lib.VerificationParams.from_spec(
                cfg.stats
            ).max_generations,
            "preview": table_md(
                first.select("concept", "kind", "status", "n_captions", "relative", "q_value")
            ),
        }
    )

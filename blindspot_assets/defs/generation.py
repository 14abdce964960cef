"""Stage 2 — generated images: one partition per generative model, one image per real caption."""

from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, progress_logger, thumbnails
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.partitions import model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.sharding import Shard, merge_shard_summaries, sharded_asset
from blindspot_assets.generators.registry import build_generator, model_data_version
from blindspot_assets.generators.registry import model_checkpoints as model_checkpoints_of
from blindspot_assets.generators.runner import (
    finish_image_set,
    generate_image_set,
    generation_shards,
)
from blindspot_assets.lineage import combined_data_version
from blindspot_assets.store.images import (
    clear_manifest_parts,
    model_version,
    read_lineage,
    read_manifest,
    write_lineage,
)
from blindspot_assets.store.versions import archive_if_replaced


@dg.observable_source_asset(
    group_name="generation",
    partitions_def=model_partitions,
    description="The checkpoint(s) each model entry points at (hub repo + revision, or a local "
    "directory). Its data version is the resolved commit, or a content hash offline; observing "
    "a new version marks the model's downstream assets stale.",
)
def model_checkpoints(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.DataVersionsByPartition:
    cfg = run_config.load()
    versions = {}
    for model_key in context.partition_keys if context.has_partition_key_range else cfg.models:
        if model_key not in cfg.models:
            continue
        found = model_checkpoints_of(cfg.model(model_key))
        versions[model_key] = combined_data_version(found)
        context.log.info(f"{model_key}: {[c.as_dict() for c in found]}")
    return dg.DataVersionsByPartition(versions)


def _plan(cfg: RunConfig, model_key: str, n_shards: int) -> list[tuple[int, int]]:
    # a set made by another version of the model is archived, never reused (store/versions.py)
    made_by = model_version(read_lineage(cfg.layout.generated_images(model_key)))
    archive_if_replaced(cfg.layout, model_key, made_by, model_data_version(cfg.model(model_key)))
    real = read_manifest(cfg.layout.real_images)
    ranges = generation_shards(real, _batch_size(cfg, model_key), n_shards)
    clear_manifest_parts(cfg.layout.generated_images(model_key), keep=ranges)  # stale plans
    return ranges


def _batch_size(cfg: RunConfig, model_key: str) -> int:
    return int(cfg.model(model_key).params.get("batch_size", 8))


def _generate_shard(context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard) -> dict[str, Any]:
    spec = cfg.model(shard.dataset)
    generator = build_generator(spec)
    _, summary = generate_image_set(
        generator,
        shard.dataset,
        read_manifest(cfg.layout.real_images),
        cfg.layout.generated_images(shard.dataset),
        batch_size=_batch_size(cfg, shard.dataset),
        base_seed=int(spec.params.get("seed", cfg.seed)),
        progress=progress_logger(context, f"generate {shard.dataset} [{shard.index}]"),
        rows=shard.rows,
    )
    return {
        "lineage": generator.lineage(),
        "n_images": summary.n_requested,
        "n_generated": summary.n_generated,
        "n_reused": summary.n_reused,
        "n_failed": summary.n_failed,
        "failures_by_reason": summary.failures_by_reason,
        "seconds": summary.seconds,
    }


def _merge(
    context: dg.OpExecutionContext, cfg: RunConfig, model_key: str, shards: list[dict[str, Any]]
) -> dict[str, Any]:
    out_dir = cfg.layout.generated_images(model_key)
    manifest = finish_image_set(out_dir, read_manifest(cfg.layout.real_images))
    lineage = shards[0]["lineage"]
    write_lineage(out_dir, lineage)
    summary = merge_shard_summaries(shards)
    context.log.info(f"{model_key}: {summary}")
    return {
        **{k: v for k, v in summary.items() if k != "failures_by_reason"},
        "failures_by_reason": dg.MetadataValue.json(summary.get("failures_by_reason", {})),
        "seconds": round(float(summary["seconds"]), 2),
        "lineage": lineage_md(lineage),
        "thumbnails": thumbnails(out_dir, manifest),
    }


generated_images = sharded_asset(
    name="generated_images",
    upstream=[real_images, model_checkpoints],
    partitions_def=model_partitions,
    backfill_policy=single_run,
    plan=_plan,
    work=_generate_shard,
    merge=_merge,
    group_name="generation",
    kinds={"pytorch", "diffusers"},
    code_version="1",
    description="For every real caption, one image from the partition's model, with a seed "
    "derived from (model, image id); resumes where an interrupted run stopped. Fans out over "
    "`scale.shards` GPU steps (one manifest part each, joined at the end).",
)


@dg.asset_check(
    asset=generated_images,
    description="Every usable real image has a generated partner or a recorded failure.",
)
def generated_images_paired(
    context: dg.AssetCheckExecutionContext, run_config: RunConfigResource
) -> dg.AssetCheckResult:
    cfg = run_config.load()
    real_ids = set(
        read_manifest(cfg.layout.real_images).filter(pl.col("status") == "ok")["image_id"]
    )
    unpaired: dict[str, int] = {}
    for model_key in cfg.models:
        out = cfg.layout.generated_images(model_key)
        if not (out / "manifest.parquet").exists():
            continue
        gen = read_manifest(out)
        unpaired[model_key] = len(real_ids - set(gen["image_id"]))
    return dg.AssetCheckResult(
        passed=not any(unpaired.values()), metadata={"unpaired": dg.MetadataValue.json(unpaired)}
    )


@dg.asset_check(
    asset=generated_images,
    description="Each model's generated images were made by the checkpoint version the model "
    "entry resolves to now; fails (naming the models) when a revision moved since.",
)
def generated_images_current_model(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    outdated = {}
    for model_key, spec in cfg.models.items():
        set_dir = cfg.layout.generated_images(model_key)
        if not (set_dir / "manifest.parquet").exists():
            continue
        made_by = model_version(read_lineage(set_dir))
        current = combined_data_version(model_checkpoints_of(spec))
        if made_by != current:
            outdated[model_key] = {"made_by": made_by, "current": current}
    return dg.AssetCheckResult(
        passed=not outdated,
        metadata={"outdated_models": dg.MetadataValue.json(outdated)},
        description=(
            f"re-materialise generated_images for {sorted(outdated)}" if outdated else None
        ),
    )

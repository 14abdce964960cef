"""Stage 2 — generated images: one partition per generative model, ``images_per_caption``
images per real caption."""

from typing import Any

import dagster as dg

from blindspot_assets.checkpoint_versions import combined_data_version
from blindspot_assets.config import RunConfig
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.metadata import lineage_md, progress_logger, thumbnails
from blindspot_assets.defs.partitions import model_partitions
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.sharding import Stage, sharded_asset
from blindspot_assets.generators.registry import (
    base_seed,
    batch_size,
    build_generator,
    model_data_version,
    resolve_model_checkpoints,
)
from blindspot_assets.generators.runner import (
    finish_image_set,
    generate_image_set,
    plan_generation,
)
from blindspot_assets.shards import GenerationShards, Shard
from blindspot_assets.store.images import read_manifest, write_lineage


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
        found = resolve_model_checkpoints(cfg.model(model_key))
        versions[model_key] = combined_data_version(found)
        context.log.info(f"{model_key}: {[c.as_dict() for c in found]}")
    return dg.DataVersionsByPartition(versions)


def _plan(cfg: RunConfig, model_key: str, n_shards: int) -> list[tuple[int, int]]:
    spec = cfg.model(model_key)
    return plan_generation(
        cfg.layout,
        model_key,
        model_data_version(spec),
        batch_size(spec),
        n_shards,
        spec.images_per_caption,
    )


def _generate_shard(
    context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard
) -> GenerationShards:
    spec = cfg.model(shard.dataset)
    generator = build_generator(spec)
    _, summary = generate_image_set(
        generator,
        shard.dataset,
        read_manifest(cfg.layout.real_images),
        cfg.layout.generated_images(shard.dataset),
        batch_size=batch_size(spec),
        base_seed=base_seed(spec, cfg.seed),
        progress=progress_logger(context, f"generate {shard.dataset} [{shard.index}]"),
        rows=shard.rows,
        images_per_caption=spec.images_per_caption,
    )
    lineage = {**generator.lineage(), "images_per_caption": spec.images_per_caption}
    return GenerationShards.of(summary, lineage)


def _merge(
    context: dg.OpExecutionContext, cfg: RunConfig, model_key: str, shards: list[GenerationShards]
) -> dict[str, Any]:
    out_dir = cfg.layout.generated_images(model_key)
    k = cfg.model(model_key).images_per_caption
    manifest = finish_image_set(out_dir, read_manifest(cfg.layout.real_images), k)
    summary = GenerationShards.merge(shards)
    write_lineage(out_dir, summary.lineage)
    context.log.info(f"{model_key}: {summary.counts()}")
    return {
        **summary.counts(),
        "images_per_caption": k,
        "failures_by_reason": dg.MetadataValue.json(summary.failures_by_reason),
        "seconds": round(summary.seconds, 2),
        "lineage": lineage_md(summary.lineage),
        "thumbnails": thumbnails(out_dir, manifest),
    }


generated_images = sharded_asset(
    "generated_images", [real_images, model_checkpoints], Stage(_plan, _generate_shard, _merge),
    group="generation", kinds={"pytorch", "diffusers"}, per_model=True,
    reads=("models", "seed"),
    description="For every real caption, `images_per_caption` images (1 by default) from the "
    "partition's model, each with a seed derived from (model, image id, sample); resumes "
    "where an interrupted run stopped. Fans out over `scale.shards` GPU steps (one manifest "
    "part each, joined at the end).",
)  # fmt: skip

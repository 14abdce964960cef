"""Stage 2 — generated images: one partition per generative model, one image per real caption."""

import dagster as dg
import polars as pl

from blindspot_assets.defs.common import lineage_md, progress_logger, thumbnails
from blindspot_assets.defs.deployment import GPU_OP_TAGS
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.partitions import model_keys, model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.generators.registry import model_checkpoints as model_checkpoints_of
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.lineage import combined_data_version
from blindspot_assets.store.images import model_version, read_lineage, read_manifest, write_lineage


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


@dg.asset(
    group_name="generation",
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[real_images, model_checkpoints],
    kinds={"pytorch", "diffusers"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="For every real caption, one image from the partition's model, with a seed "
    "derived from (model, image id); resumes where an interrupted run stopped.",
)
def generated_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    real = read_manifest(cfg.layout.real_images)
    per_model = {}
    for model_key in model_keys(context):
        spec = cfg.model(model_key)
        generator = build_generator(spec)
        manifest, summary = generate_image_set(
            generator,
            model_key,
            real,
            cfg.layout.generated_images(model_key),
            batch_size=int(spec.params.get("batch_size", 8)),
            base_seed=int(spec.params.get("seed", cfg.seed)),
            progress=progress_logger(context, f"generate {model_key}"),
        )
        write_lineage(cfg.layout.generated_images(model_key), generator.lineage())
        per_model[model_key] = {
            "lineage": generator.lineage(),
            "n_images": summary.n_requested,
            "n_generated": summary.n_generated,
            "n_reused": summary.n_reused,
            "n_failed": summary.n_failed,
            "failures_by_reason": summary.failures_by_reason,
            "seconds": round(summary.seconds, 2),
        }
        context.log.info(f"{model_key}: {per_model[model_key]}")
    first = model_keys(context)[0]
    only = per_model[first] if len(per_model) == 1 else None
    return dg.MaterializeResult(
        metadata={
            "models": lineage_md(per_model),
            "n_images": sum(m["n_images"] for m in per_model.values()),
            "n_failed": sum(m["n_failed"] for m in per_model.values()),
            **({"lineage": lineage_md(only["lineage"])} if only else {}),
            "thumbnails": thumbnails(
                cfg.layout.generated_images(first),
                read_manifest(cfg.layout.generated_images(first)),
            ),
        }
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

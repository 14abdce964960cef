"""Stage 1 — real images: a sample of the model's training distribution, with captions."""

import time
from typing import Any

import dagster as dg

from blindspot_assets.defs.declare import config_of, stage_asset
from blindspot_assets.defs.metadata import progress_logger, table_md, thumbnails
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sources.intake import manifest_counts
from blindspot_assets.sources.registry import source_module


@stage_asset(
    group="inputs",
    runs_on="any",
    kinds={"python", "parquet"},
    reads=("real", "seed"),
    description="Real image–caption pairs (demo world, LAION parquet, img2dataset output or a "
    "folder) in one folder with manifest.parquet; failures recorded with their reason.",
)
def real_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult[Any]:
    cfg = config_of(context, run_config)
    out_dir = cfg.layout.real_images
    t0 = time.perf_counter()
    manifest = source_module(cfg.real).fetch(
        cfg.real, out_dir, cfg.seed, progress_logger(context, "real images")
    )
    counts = manifest_counts(manifest)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            **{k: v for k, v in counts.items() if k != "failures_by_reason"},
            "failures_by_reason": dg.MetadataValue.json(counts["failures_by_reason"]),
            "source": dg.MetadataValue.json({"kind": cfg.real.kind, **cfg.real.params}),
            "seed": cfg.seed,
            "seconds": round(time.perf_counter() - t0, 2),
            "preview": table_md(manifest.select("image_id", "caption", "status"), 10),
            "thumbnails": thumbnails(out_dir, manifest),
        }
    )

"""Stage 1 — real images: a sample of the model's training distribution, with captions."""

import time

import dagster as dg
import polars as pl

from blindspot_assets.defs.common import progress_logger, table_md, thumbnails
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.sources.registry import source_module
from blindspot_assets.store.images import read_manifest


@dg.asset(
    group_name="inputs",
    kinds={"python", "parquet"},
    code_version="1",
    description="Real image–caption pairs (demo world, LAION parquet, img2dataset output or a "
    "folder) in one folder with manifest.parquet; failures recorded with their reason.",
)
def real_images(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    out_dir = cfg.layout.real_images
    t0 = time.perf_counter()
    manifest = source_module(cfg.real).fetch(
        cfg.real, out_dir, cfg.seed, progress_logger(context, "real images")
    )
    failures = manifest.filter(pl.col("status") != "ok")
    empty = manifest.filter(
        (pl.col("status") == "ok") & (pl.col("caption").str.strip_chars() == "")
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "n_images": manifest.height,
            "n_ok": manifest.height - failures.height,
            "n_failed": failures.height,
            "n_empty_captions": empty.height,
            "failures_by_reason": dg.MetadataValue.json(
                dict(failures.group_by("status").len().iter_rows())
            ),
            "source": dg.MetadataValue.json({"kind": cfg.real.kind, **cfg.real.params}),
            "seed": cfg.seed,
            "seconds": round(time.perf_counter() - t0, 2),
            "preview": table_md(manifest.select("image_id", "caption", "status"), 10),
            "thumbnails": thumbnails(out_dir, manifest),
        }
    )


@dg.asset_check(
    asset=real_images,
    description="Every manifest row is an image on disk or a recorded failure; ids are unique.",
)
def real_images_complete(run_config: RunConfigResource) -> dg.AssetCheckResult:
    cfg = run_config.load()
    manifest = read_manifest(cfg.layout.real_images)
    ok = manifest.filter(pl.col("status") == "ok")
    missing = [p for p in ok["path"] if not (cfg.layout.real_images / p).exists()]
    return dg.AssetCheckResult(
        passed=not missing and not manifest["image_id"].is_duplicated().any(),
        metadata={"n_missing_files": len(missing), "examples": dg.MetadataValue.json(missing[:5])},
    )

"""Stage 3 — DINOv2 token features of real and generated images, in Zarr."""

from dataclasses import asdict
from pathlib import Path

import dagster as dg
import numpy as np

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, progress_logger
from blindspot_assets.defs.deployment import GPU_OP_TAGS
from blindspot_assets.defs.generation import generated_images
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.partitions import model_keys, model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore


def _encode_dataset(
    context: dg.AssetExecutionContext, cfg: RunConfig, dataset: str
) -> dict[str, object]:
    encoder = load_encoder(cfg.encoder)
    image_dir = cfg.layout.images(dataset)
    summary = extract_features(
        encoder,
        read_manifest(image_dir),
        image_dir,
        cfg.layout.features(dataset),
        progress=progress_logger(context, f"features {dataset}"),
    )
    return {"lineage": encoder.lineage(), **asdict(summary)}


def _feature_metadata(path: Path, summary: dict[str, object]) -> dict[str, object]:
    store = RowStore.open(path)
    tokens = store.array("tokens")
    return {
        "path": dg.MetadataValue.path(str(path)),
        "shape": str(tuple(tokens.shape)),
        "dtype": str(tokens.dtype),
        "n_valid": int(summary["n_valid"]),  # type: ignore[call-overload]
        "n_invalid_by_status": dg.MetadataValue.json(summary["n_invalid_by_status"]),
        "images_per_s": round(float(summary["images_per_s"]), 1),  # type: ignore[arg-type]
        "seconds": round(float(summary["seconds"]), 2),  # type: ignore[arg-type]
        "lineage": lineage_md(summary["lineage"]),  # type: ignore[arg-type]
    }


@dg.asset(
    group_name="features",
    deps=[real_images],
    kinds={"pytorch", "zarr"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="DINOv2-with-registers last_hidden_state of every real image: (N, T, d) float16 "
    "in Zarr, all tokens (CLS, registers, patches); bad images kept as invalid rows.",
)
def real_features(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    summary = _encode_dataset(context, cfg, REAL)
    return dg.MaterializeResult(metadata=_feature_metadata(cfg.layout.features(REAL), summary))


@dg.asset(
    group_name="features",
    partitions_def=model_partitions,
    backfill_policy=single_run,
    deps=[generated_images],
    kinds={"pytorch", "zarr"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="DINOv2 token features of one model's generated images, same layout as "
    "real_features; row i pairs with the real image of the same image_id.",
)
def gen_features(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult:
    cfg = run_config.load()
    per_model = {m: _encode_dataset(context, cfg, m) for m in model_keys(context)}
    first = model_keys(context)[0]
    meta = _feature_metadata(cfg.layout.features(first), per_model[first])
    if len(per_model) > 1:
        meta["models"] = lineage_md(
            {m: {k: v for k, v in s.items() if k != "lineage"} for m, s in per_model.items()}
        )
    return dg.MaterializeResult(metadata=meta)


def check_feature_store(path: Path, expected_d: int | None = None) -> dg.AssetCheckResult:
    store = RowStore.open(path)
    tokens = store.array("tokens")
    valid = store.valid()
    nonfinite = 0
    for start, stop in store.iter_row_blocks():
        block = np.asarray(tokens[start:stop])[valid[start:stop]]
        nonfinite += int((~np.isfinite(block)).any(axis=(1, 2)).sum())
    shape_ok = len(tokens.shape) == 3 and (expected_d is None or tokens.shape[2] == expected_d)
    return dg.AssetCheckResult(
        passed=bool(store.is_complete() and nonfinite == 0 and shape_ok),
        metadata={
            "nonfinite_rows": nonfinite,
            "shape": str(tuple(tokens.shape)),
            "complete": store.is_complete(),
            "n_valid": int(valid.sum()),
        },
    )


@dg.asset_check(asset=real_features, description="Features finite, complete, (N, T, d).")
def real_features_finite(run_config: RunConfigResource) -> dg.AssetCheckResult:
    return check_feature_store(run_config.load().layout.features(REAL))

"""Stage 3 — DINOv2 token features of real and generated images, in Zarr."""

from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg
import numpy as np

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, progress_logger
from blindspot_assets.defs.generation import generated_images
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.partitions import model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.sharding import (
    Shard,
    finish_sharded_store,
    merge_shard_summaries,
    sharded_asset,
)
from blindspot_assets.encoders.dinov2 import (
    DinoEncoder,
    extract_features,
    load_encoder,
    open_feature_store,
)
from blindspot_assets.encoders.images import policy_of_run
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore


def _encoder(cfg: RunConfig, device: str | None = None) -> DinoEncoder:
    """The run's encoder behind the run's one image pipeline (the same for every dataset)."""
    spec = cfg.encoder if device is None else replace(cfg.encoder, device=device)
    return load_encoder(spec, policy_of_run(cfg.images, cfg.layout.real_images))


def _plan(cfg: RunConfig, dataset: str, n_shards: int) -> list[tuple[int, int]]:
    """Create or resume the dataset's feature store; its shards' row ranges.

    The encoder is loaded on the CPU here only for the store's shape and fingerprint; each
    shard records where and in which dtype it ran, and the merge writes that into the store.
    """
    encoder = _encoder(cfg, device="cpu")
    manifest = read_manifest(cfg.layout.images(dataset))
    store = open_feature_store(encoder, manifest, cfg.layout.features(dataset))
    return store.shard_ranges(n_shards)


def _encode_shard(
    context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard
) -> dict[str, object]:
    encoder = _encoder(cfg)
    image_dir = cfg.layout.images(shard.dataset)
    summary = extract_features(
        encoder,
        read_manifest(image_dir),
        image_dir,
        cfg.layout.features(shard.dataset),
        progress=progress_logger(context, f"features {shard.dataset} [{shard.index}]"),
        rows=shard.rows,
        finish=False,
    )
    return {"lineage": encoder.lineage(), **asdict(summary)}


def _merge(
    context: dg.OpExecutionContext, cfg: RunConfig, dataset: str, shards: list[dict[str, object]]
) -> dict[str, object]:
    path = cfg.layout.features(dataset)
    finish_sharded_store(path, shards[0]["lineage"])  # type: ignore[arg-type]
    summary = merge_shard_summaries(shards)
    summary["images_per_s"] = summary["n_computed"] / max(summary["seconds"], 1e-9)
    return _feature_metadata(path, {**summary, "lineage": shards[0]["lineage"]})


def _feature_metadata(path: Path, summary: dict[str, object]) -> dict[str, object]:
    store = RowStore.open(path)
    tokens = store.array("tokens")
    return {
        "path": dg.MetadataValue.path(str(path)),
        "shape": str(tuple(tokens.shape)),
        "dtype": str(tokens.dtype),
        "n_valid": int(summary["n_valid"]),  # type: ignore[call-overload]
        "n_computed": int(summary.get("n_computed", 0)),  # type: ignore[call-overload]
        "n_invalid_by_status": dg.MetadataValue.json(summary["n_invalid_by_status"]),
        "images_per_s": round(float(summary["images_per_s"]), 1),  # type: ignore[arg-type]
        "seconds": round(float(summary["seconds"]), 2),  # type: ignore[arg-type]
        "lineage": lineage_md(summary["lineage"]),  # type: ignore[arg-type]
    }


real_features = sharded_asset(
    name="real_features",
    upstream=[real_images],
    partitions_def=None,
    plan=_plan,
    work=_encode_shard,
    merge=_merge,
    group_name="features",
    kinds={"pytorch", "zarr"},
    code_version="1",
    description="DINOv2-with-registers last_hidden_state of every real image: (N, T, d) float16 "
    "in Zarr, all tokens (CLS, registers, patches); bad images kept as invalid rows. Fans out "
    "over `scale.shards` GPU steps writing one store.",
)

gen_features = sharded_asset(
    name="gen_features",
    upstream=[generated_images],
    partitions_def=model_partitions,
    backfill_policy=single_run,
    plan=_plan,
    work=_encode_shard,
    merge=_merge,
    group_name="features",
    kinds={"pytorch", "zarr"},
    code_version="1",
    description="DINOv2 token features of one model's generated images, same layout as "
    "real_features; row i pairs with the real image of the same image_id. Sharded like "
    "real_features.",
)


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

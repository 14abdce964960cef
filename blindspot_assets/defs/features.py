"""Stage 3 — DINOv2 token features of real and generated images, in Zarr."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.generation import generated_images
from blindspot_assets.defs.inputs import real_images
from blindspot_assets.defs.metadata import lineage_md, progress_logger
from blindspot_assets.defs.sharding import Stage, sharded_asset
from blindspot_assets.encoders.dinov2 import (
    DinoEncoder,
    extract_features,
    load_encoder,
    open_feature_store,
)
from blindspot_assets.encoders.images import (
    JpegHistory,
    generated_histories,
    history_table,
    policy_of_run,
    sample_histories,
)
from blindspot_assets.generators.registry import carries_real_history
from blindspot_assets.shards import FeatureShards, Shard, finish_sharded_store
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import write_table_partition


def run_encoder(cfg: RunConfig, device: str | None = None) -> DinoEncoder:
    """The run's encoder behind the run's one image pipeline (the same for every dataset)."""
    spec = cfg.encoder if device is None else replace(cfg.encoder, device=device)
    return load_encoder(spec, policy_of_run(cfg.images, cfg.layout.real_images))


def _plan(cfg: RunConfig, dataset: str, n_shards: int) -> list[tuple[int, int]]:
    """Create or resume the dataset's feature store; its shards' row ranges.

    The encoder is loaded on the CPU here only for the store's shape and fingerprint; each
    shard records where and in which dtype it ran, and the merge writes that into the store.
    """
    encoder = run_encoder(cfg, device="cpu")
    manifest = read_manifest(cfg.layout.images(dataset))
    store = open_feature_store(
        encoder, manifest, cfg.layout.features(dataset), histories_of(cfg, dataset)
    )
    return store.shard_ranges(n_shards)


def histories_of(cfg: RunConfig, dataset: str) -> dict[str, JpegHistory | None] | None:
    """What each image of ``dataset`` receives before the common pass: a generated set, its
    paired real files' JPEG histories (``images.history: match_real``); the real set, and a
    control family's copies of the real files (which carry their history already), none."""
    if dataset == REAL or carries_real_history(cfg.model(dataset)):
        return None
    histories = generated_histories(cfg.images, cfg.layout.real_images)
    if histories is None:
        return None
    return sample_histories(histories, read_manifest(cfg.layout.images(dataset)))


def _encode_shard(context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard) -> FeatureShards:
    encoder = run_encoder(cfg)
    image_dir = cfg.layout.images(shard.dataset)
    summary = extract_features(
        encoder,
        read_manifest(image_dir),
        image_dir,
        cfg.layout.features(shard.dataset),
        progress=progress_logger(context, f"features {shard.dataset} [{shard.index}]"),
        rows=shard.rows,
        finish=False,
        histories=histories_of(cfg, shard.dataset),
    )
    return FeatureShards.of(summary, encoder.lineage())


def _merge(
    context: dg.OpExecutionContext, cfg: RunConfig, dataset: str, shards: list[FeatureShards]
) -> dict[str, Any]:
    summary = FeatureShards.merge(shards)
    finish_sharded_store(cfg.layout.features(dataset), summary.lineage)
    metadata = feature_metadata(cfg.layout.features(dataset), summary)
    histories = histories_of(cfg, dataset)
    if dataset != REAL:
        table = history_table(read_manifest(cfg.layout.images(dataset)), histories, dataset)
        write_table_partition(cfg.layout.tables, "image_history", dataset, table)
        counts = table.group_by("history_applied").len().sort("len", descending=True)
        metadata["image_history"] = dg.MetadataValue.json(dict(counts.iter_rows()))
    return metadata


def feature_metadata(path: str | Path, summary: FeatureShards) -> dict[str, Any]:
    """The feature asset's metadata: the store's shape and dtype, counts, rate, lineage."""
    tokens = RowStore.open(path).array("tokens")
    return {
        "path": dg.MetadataValue.path(str(path)),
        "shape": str(tuple(tokens.shape)),
        "dtype": str(tokens.dtype),
        "n_valid": summary.n_valid,
        "n_computed": summary.n_computed,
        "n_invalid_by_status": dg.MetadataValue.json(summary.n_invalid_by_status),
        "images_per_s": round(summary.images_per_s, 1),
        "seconds": round(summary.seconds, 2),
        "lineage": lineage_md(summary.lineage),
    }


FEATURES = Stage(plan=_plan, work=_encode_shard, merge=_merge)

real_features = sharded_asset(
    "real_features", [real_images], FEATURES, group="features", kinds={"pytorch", "zarr"},
    reads=("encoder", "images"),
    description="DINOv2-with-registers last_hidden_state of every real image: (N, T, d) "
    "float16 in Zarr, all tokens (CLS, registers, patches); bad images kept as invalid rows. "
    "Fans out over `scale.shards` GPU steps writing one store.",
)  # fmt: skip
gen_features = sharded_asset(
    "gen_features", [generated_images], FEATURES, group="features", kinds={"pytorch", "zarr"},
    per_model=True, reads=("encoder", "images", "models"),
    description="DINOv2 token features of one model's generated images, same layout as "
    "real_features; row i pairs with the real image of the same image_id. Sharded like "
    "real_features.",
)  # fmt: skip

"""Stage 4 — concepts: the archetypal SAE and every image's sparse concept codes."""

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.common import lineage_md, progress_logger
from blindspot_assets.defs.deployment import GPU_OP_TAGS
from blindspot_assets.defs.features import gen_features, real_features
from blindspot_assets.defs.partitions import model_partitions, single_run
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.sharding import (
    Shard,
    finish_sharded_store,
    merge_shard_summaries,
    sharded_asset,
)
from blindspot_assets.devices import choose_device
from blindspot_assets.sae import (
    encode_features_to_codes,
    load_sae,
    open_codes_store,
    save_sae,
    train_sae,
)
from blindspot_assets.sae.checkpoint import HEADER_FILE
from blindspot_assets.sae.released import check_converted_threshold, import_released_checkpoint
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore, store_exists


def _training_stores(cfg: RunConfig) -> list[str | Path]:
    stores = [cfg.layout.features(REAL)]
    if cfg.sae.train_on == "real+generated":
        stores += [
            cfg.layout.features(m) for m in cfg.models if store_exists(cfg.layout.features(m))
        ]
    return stores


@dg.asset(
    group_name="concepts",
    deps=[real_features, gen_features],
    kinds={"pytorch", "safetensors"},
    code_version="1",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    description="Relaxed archetypal SAE (TopK/BatchTopK) trained on the real features (or real "
    "+ generated, as configured); safetensors weights with a JSON header.",
)
def sae(context: dg.AssetExecutionContext, run_config: RunConfigResource) -> dg.MaterializeResult:
    cfg = run_config.load()
    stores = _training_stores(cfg)
    d = int(RowStore.open(stores[0]).array("tokens").shape[2])
    if cfg.sae.pretrained:
        return _use_pretrained(context, cfg, Path(cfg.sae.pretrained), d)
    sae_cfg = cfg.sae.model.sized(d)
    train_cfg = cfg.sae.train
    t0 = time.perf_counter()
    result = train_sae(
        stores,
        sae_cfg,
        train_cfg,
        checkpoint_dir=cfg.layout.sae / "checkpoints",
        log=lambda m: context.log.info(f"sae step {json.dumps(m, default=str)}"),
    )
    header: dict[str, Any] = {
        "trained_on": cfg.sae.train_on,
        "training_stores": [str(s) for s in stores],
        "data_version": result.data_version,
        "metrics": result.metrics,
        "run_config": cfg.name,
    }
    save_sae(result.model, cfg.layout.sae, header)
    replicate = (
        _train_replicate(context, cfg, stores, d) if cfg.sae.replicate_seed is not None else {}
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(cfg.layout.sae)),
            "n_concepts": sae_cfg.n_concepts,
            "d": d,
            **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
            "trained_on": cfg.sae.train_on,
            "data_version": result.data_version,
            "config": lineage_md({"sae": sae_cfg.__dict__, "train": train_cfg.__dict__}),
            "seconds": round(time.perf_counter() - t0, 2),
            **replicate,
        },
        data_version=dg.DataVersion(str(result.data_version)),
    )


def _train_replicate(
    context: dg.AssetExecutionContext, cfg: RunConfig, stores: list[str | Path], d: int
) -> dict[str, Any]:
    """The same SAE trained again with ``sae.replicate_seed``: blindspots say which of their
    concepts replicate in it (``stats.replication``)."""
    spec = replace(cfg.sae.train, seed=int(cfg.sae.replicate_seed or 0))
    result = train_sae(
        stores,
        cfg.sae.model.sized(d),
        spec,
        checkpoint_dir=cfg.layout.sae_replicate / "checkpoints",
        log=lambda m: context.log.info(f"sae replicate step {json.dumps(m, default=str)}"),
    )
    header = {"replicate_of": str(cfg.layout.sae), "seed": spec.seed,
              "data_version": result.data_version, "metrics": result.metrics}  # fmt: skip
    save_sae(result.model, cfg.layout.sae_replicate, header)
    return {
        "replicate_path": dg.MetadataValue.path(str(cfg.layout.sae_replicate)),
        "replicate_seed": spec.seed,
    }


def _use_pretrained(
    context: dg.AssetExecutionContext, cfg: RunConfig, src: Path, d: int
) -> dg.MaterializeResult:
    """Use released or previously trained weights instead of training (``sae.pretrained``)."""
    if not src.exists():
        raise FileNotFoundError(f"sae.pretrained {src} does not exist")
    if (src / HEADER_FILE).exists():  # already in our format
        model, header = load_sae(src)
        check_converted_threshold(header, cfg.sae.threshold, f"sae.pretrained {src}")
        save_sae(model, cfg.layout.sae, {k: v for k, v in header.items() if k != "config"})
    else:  # a released overcomplete pickle: converted without executing it
        import_released_checkpoint(
            src, cfg.layout.sae, log=context.log.info, threshold=cfg.sae.threshold
        )
    model, header = load_sae(cfg.layout.sae)
    if model.cfg.d != d:
        raise ValueError(
            f"sae.pretrained {src} expects {model.cfg.d}-d tokens but the features are {d}-d: "
            "use the encoder it was trained on (DINOv2 ViT-B/14 with registers: 768-d)"
        )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(cfg.layout.sae)),
            "pretrained": str(src),
            "n_concepts": model.cfg.n_concepts,
            "d": d,
            "header": lineage_md({k: v for k, v in header.items() if k != "config"}),
        },
        data_version=dg.DataVersion(str(header["data_version"])),
    )


def _plan_codes(cfg: RunConfig, dataset: str, n_shards: int) -> list[tuple[int, int]]:
    """Create or resume the dataset's codes store; its shards' row ranges."""
    model, _ = load_sae(cfg.layout.sae)
    store = open_codes_store(
        model, cfg.layout.features(dataset), cfg.layout.codes(dataset), cfg.sae.k_max_store
    )
    return store.shard_ranges(n_shards)


def _encode_shard(context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard) -> dict[str, Any]:
    # the SAE on this step's card (a GPU step): encoding is a dense (tokens × d) @ (d × c)
    model, header = load_sae(cfg.layout.sae, device=choose_device("auto"))
    summary = encode_features_to_codes(
        model,
        cfg.layout.features(shard.dataset),
        cfg.layout.codes(shard.dataset),
        k_max=cfg.sae.k_max_store,
        progress=progress_logger(context, f"codes {shard.dataset} [{shard.index}]"),
        rows=shard.rows,
        finish=False,
    )
    return {**summary, "sae_data_version": header.get("data_version")}


def _merge_codes(
    context: dg.OpExecutionContext, cfg: RunConfig, dataset: str, shards: list[dict[str, Any]]
) -> dict[str, Any]:
    finish_sharded_store(cfg.layout.codes(dataset))
    summary = merge_shard_summaries(shards)
    tokens = summary["tokens_encoded"]
    summary["mean_l0"] = summary["l0_sum"] / tokens if tokens else float("nan")
    summary["tokens_per_s"] = tokens / max(summary["seconds"], 1e-9)
    return _codes_metadata(cfg, dataset, summary)


def _codes_metadata(cfg: RunConfig, dataset: str, summary: dict[str, Any]) -> dict[str, Any]:
    store = RowStore.open(cfg.layout.codes(dataset))
    return {
        "path": dg.MetadataValue.path(str(cfg.layout.codes(dataset))),
        "xi_shape": str(tuple(store.array("xi").shape)),
        "n_valid": int(store.valid().sum()),
        "summary": lineage_md(summary),
    }


real_concept_codes = sharded_asset(
    name="real_concept_codes",
    upstream=[sae, real_features],
    partitions_def=None,
    plan=_plan_codes,
    work=_encode_shard,
    merge=_merge_codes,
    group_name="concepts",
    kinds={"pytorch", "zarr"},
    code_version="1",
    description="Sparse concept codes of the real images: per-image energy ξ (N, c), firing "
    "counts, and the top active concepts of every token. Sharded like the features.",
)

concept_codes = sharded_asset(
    name="concept_codes",
    upstream=[sae, gen_features],
    partitions_def=model_partitions,
    backfill_policy=single_run,
    plan=_plan_codes,
    work=_encode_shard,
    merge=_merge_codes,
    group_name="concepts",
    kinds={"pytorch", "zarr"},
    code_version="1",
    description="Sparse concept codes of one model's generated images (same layout as "
    "real_concept_codes).",
)

"""Stage 4 — concepts: the archetypal SAE and every image's sparse concept codes."""

from typing import Any

import dagster as dg

from blindspot_assets.config import RunConfig
from blindspot_assets.defs.declare import config_of, stage_asset
from blindspot_assets.defs.features import gen_features, real_features
from blindspot_assets.defs.metadata import lineage_md, metadata_values, progress_logger
from blindspot_assets.defs.resources import RunConfigResource
from blindspot_assets.defs.sharding import Stage, sharded_asset
from blindspot_assets.defs.versions import loaded_config
from blindspot_assets.devices import choose_device
from blindspot_assets.sae import encode_features_to_codes, load_sae, open_codes_store
from blindspot_assets.sae.build import build_sae
from blindspot_assets.shards import CodeShards, Shard, finish_sharded_store
from blindspot_assets.store.rowstore import RowStore

# the SAE reads the models' entries only when it trains on their features too
TRAINS_ON_GENERATED = loaded_config().sae.train_on == "real+generated"


@stage_asset(
    group="concepts",
    runs_on="gpu",
    deps=[real_features, gen_features],
    kinds={"pytorch", "safetensors"},
    reads=("sae", "name", *(("models",) if TRAINS_ON_GENERATED else ())),
    description="Relaxed archetypal SAE (TopK/BatchTopK) trained on the real features (or real "
    "+ generated, as configured); safetensors weights with a JSON header.",
)
def sae(
    context: dg.AssetExecutionContext, run_config: RunConfigResource
) -> dg.MaterializeResult[Any]:
    built = build_sae(config_of(context, run_config), log=context.log.info)
    if built.pretrained is not None:
        meta: dict[str, Any] = {"pretrained": built.pretrained, "header": lineage_md(built.header)}
    else:
        meta = {
            **{k: v for k, v in built.metrics.items() if isinstance(v, int | float)},
            "trained_on": built.trained_on,
            "data_version": built.data_version,
            "config": lineage_md(built.config),
            "seconds": round(built.seconds, 2),
        }
        if built.replicate_path is not None:
            meta |= {"replicate_path": built.replicate_path, "replicate_seed": built.replicate_seed}
    return dg.MaterializeResult(
        metadata=metadata_values(
            {"path": built.path, "n_concepts": built.n_concepts, "d": built.d, **meta}
        ),
        data_version=dg.DataVersion(built.data_version),
    )


def _plan_codes(cfg: RunConfig, dataset: str, n_shards: int) -> list[tuple[int, int]]:
    """Create or resume the dataset's codes store; its shards' row ranges."""
    model, _ = load_sae(cfg.layout.sae)
    store = open_codes_store(
        model, cfg.layout.features(dataset), cfg.layout.codes(dataset), cfg.sae.k_max_store
    )
    return store.shard_ranges(n_shards)


def _encode_shard(context: dg.OpExecutionContext, cfg: RunConfig, shard: Shard) -> CodeShards:
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
    version = header.get("data_version")
    return CodeShards.of(summary, None if version is None else str(version))


def _merge_codes(
    context: dg.OpExecutionContext, cfg: RunConfig, dataset: str, shards: list[CodeShards]
) -> dict[str, Any]:
    path = cfg.layout.codes(dataset)
    finish_sharded_store(path)
    store = RowStore.open(path)
    return {
        "path": dg.MetadataValue.path(str(path)),
        "xi_shape": str(tuple(store.array("xi").shape)),
        "n_valid": int(store.valid().sum()),
        "summary": lineage_md(CodeShards.merge(shards).as_dict()),
    }


CODES = Stage(plan=_plan_codes, work=_encode_shard, merge=_merge_codes)

real_concept_codes = sharded_asset(
    "real_concept_codes", [sae, real_features], CODES, group="concepts",
    kinds={"pytorch", "zarr"}, reads=("sae",),
    description="Sparse concept codes of the real images: per-image energy ξ (N, c), firing "
    "counts, and the top active concepts of every token. Sharded like the features.",
)  # fmt: skip
concept_codes = sharded_asset(
    "concept_codes", [sae, gen_features], CODES, group="concepts", kinds={"pytorch", "zarr"},
    per_model=True, reads=("sae",),
    description="Sparse concept codes of one model's generated images (same layout as "
    "real_concept_codes).",
)  # fmt: skip

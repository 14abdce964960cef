"""Model partitions, defined once: one partition per generative model of the run config.

The registry is read when the code location loads, so adding a model to the YAML adds a
partition without a code change (reload the code location in the UI); so is the shard count.
"""

from __future__ import annotations

import dagster as dg

from blindspot_assets.config import load_config
from blindspot_assets.defs.resources import default_config_path
from blindspot_assets.generators.registry import check_models

_loaded = load_config(default_config_path())
check_models(_loaded.models.values())  # a mistyped model field stops the load, not a run
model_partitions = dg.StaticPartitionsDefinition(list(_loaded.models))

# Blindspot comparisons (``stats.compare``), one per "base..candidate" key. The changes asset is
# partitioned by its *candidate* model, not by comparison: a second partitions definition could
# not share a job with the model assets (Dagster refuses to build such a job), and
# ``blindspot_job`` runs the whole graph over a model range. Each comparison is still its own
# table partition, and concept_stats[base] maps to the candidate's partition.
comparison_keys = [f"{base}..{cand}" for base, cand in _loaded.stats.compare]
changes_mapping = dg.StaticPartitionMapping(
    {m: {m, *(c for b, c in _loaded.stats.compare if b == m)} for m in _loaded.models}
)


def comparison_key(base: str, candidate: str) -> str:
    return f"{base}..{candidate}"


# How many shard steps each per-image stage fans out over (``scale.shards``; defs/sharding.py).
N_SHARDS = _loaded.scale.shards

# One run may cover a range of models: each model asset loops over ``context.partition_keys``.
single_run = dg.BackfillPolicy.single_run()


def model_keys(context: dg.OpExecutionContext | dg.AssetExecutionContext) -> list[str]:
    """The model partitions this run covers; an empty range is an error, never a silent no-op."""
    keys = list(context.partition_keys)
    if not keys:
        order = model_partitions.get_partition_keys()
        raise ValueError(
            "the run's model partition range is empty: a range runs from the first to the last "
            f"model in registry order {order}"
        )
    return keys

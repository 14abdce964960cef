"""What the ``concept_names`` asset runs: the run's concepts named by its labeller
(``labels.model_id``), stamped and written as the table ``concept_names`` — or, with no
labeller configured, an empty table so no names from an earlier labeller outlive its config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.labels.naming import empty_names, name_run_concepts
from blindspot_assets.sae.build import sae_version
from blindspot_assets.store.tables import refresh_views, write_table_partition

SKIPPED = (
    "labels.model_id is 'none': no labeller configured, no concept named. Set labels.model_id "
    "to a captioning or vision-language checkpoint (hub id or local folder; docs/concept-names.md)"
    " to name the concepts from their top images."
)


@dataclass(frozen=True)
class NamedConcepts:
    """The ``concept_names`` rows written, the labeller's lineage (None: none configured) and
    what to report."""

    names: pl.DataFrame
    captioner: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)


def name_concepts_of_run(
    cfg: RunConfig,
    run_id: str,
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
) -> NamedConcepts:
    """Name the run's concepts and write the table ``concept_names`` (partition ``all``)."""
    tables = cfg.layout.tables
    if not cfg.labels.enabled:
        write_table_partition(tables, "concept_names", "all", empty_names())
        refresh_views(cfg.layout.duckdb, tables)
        return NamedConcepts(empty_names(), None)
    from blindspot_assets.labels.vlm import load_captioner  # transformers, only when used

    captioner = load_captioner(cfg.labels)
    log(f"labeller {cfg.labels.model_id} at {captioner.version} on {captioner.device}")
    names, meta = name_run_concepts(cfg, captioner, progress)
    names = names.with_columns(
        pl.lit(sae_version(cfg.layout.sae)).alias("sae_version"), pl.lit(run_id).alias("run_id")
    )
    write_table_partition(tables, "concept_names", "all", names)
    refresh_views(cfg.layout.duckdb, tables)
    return NamedConcepts(names, captioner.lineage(), meta)

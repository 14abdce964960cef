"""What the report reads: the results tables, each with exactly the columns its schema names
(``store/schema.py``), and the run's lineage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.config_fields import flat_dict
from blindspot_assets.store.images import MANIFEST, model_version, read_lineage
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.schema import LINEAGE_COLUMNS, TABLE_SCHEMAS
from blindspot_assets.store.tables import read_table

REQUIRED_TABLES = ("concept_stats", "blindspots", "concept_top_images")
OPTIONAL_TABLES = ("concept_labels", "datapoint_deltas", "memorization_candidates")


def conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """``df`` with the columns of table ``name``'s schema, in its order: a column the schema
    does not name is dropped (the report cannot read it), one it names that a partition lacks
    (written before the column existed) is null."""
    columns = TABLE_SCHEMAS[name]
    missing = [pl.lit(None).alias(c) for c in columns if c not in df.columns]
    return df.with_columns(missing).select(columns)


def load_table(
    tables_root: str | Path, name: str, partition: str | None = None
) -> pl.DataFrame | None:
    """A table (all partitions, or one) in its schema's columns, or None when it has not been
    materialised."""
    try:
        return conform(read_table(tables_root, name, partition), name)
    except (FileNotFoundError, ValueError):
        return None


def numeric(df: pl.DataFrame, column: str) -> np.ndarray:
    """A column as float64, NaN where null."""
    return np.asarray(df[column].cast(pl.Float64).to_numpy(), dtype=np.float64)


def for_model(df: pl.DataFrame | None, model_key: str) -> pl.DataFrame | None:
    """The rows of one model of a per-model table (by ``model_key``)."""
    return None if df is None else df.filter(pl.col("model_key") == model_key)


@dataclass
class Labels:
    """Concept id → its best caption terms (with scores when the table has them)."""

    terms: dict[int, list[tuple[str, float | None]]] = field(default_factory=dict)
    # Concept id → its name from a vision-language model (table concept_names), shown first.
    names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, df: pl.DataFrame | None, per_concept: int = 3) -> Labels:
        """The ``per_concept`` best terms of each concept from ``concept_labels`` (by rank)."""
        if df is None:
            return cls()
        terms: dict[int, list[tuple[str, float | None]]] = {}
        for c, t, s in df.sort("rank").select("concept", "term", "score").iter_rows():
            got = terms.setdefault(int(c), [])
            if len(got) < per_concept and all(t != x for x, _ in got):
                got.append((str(t), None if s is None or not np.isfinite(s) else float(s)))
        return cls(terms)

    def short(self, concept: int) -> str:
        """The model's name, else the best term alone."""
        if self.names.get(concept):
            return self.names[concept]
        got = self.terms.get(concept)
        return got[0][0] if got else ""

    def name(self, concept: int) -> str:
        """The model's name in quotes beside the caption terms: “red disc” — red · circle."""
        got = self.terms.get(concept)
        terms = " · ".join(t for t, _ in got) if got else ""
        named = self.names.get(concept)
        if not named:
            return terms
        return f"“{named}” — {terms}" if terms else f"“{named}”"


@dataclass
class Lineage:
    """What produced the run: config, encoder, SAE, per-model generator lineage, table stamps."""

    run: dict[str, Any]
    encoder: dict[str, Any]
    sae: dict[str, Any]
    models: dict[str, dict[str, Any]]
    stamps: dict[str, dict[str, list[str]]]  # table → lineage column → distinct values


def _store_attrs(path: str | Path) -> dict[str, Any]:
    try:
        attrs = RowStore.open(path).attrs
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in attrs.items() if not k.startswith("_")}


def _sae_header(cfg: RunConfig) -> dict[str, Any]:
    for name in ("header.json", "config.json"):
        path = cfg.layout.sae / name
        if path.exists():
            try:
                header: dict[str, Any] = json.loads(path.read_text())
            except json.JSONDecodeError:
                return {"error": f"{path} is not valid JSON"}
            return header
    return {}


def _manifest_counts(set_dir: Path) -> dict[str, int]:
    path = set_dir / MANIFEST
    if not path.exists():
        return {}
    df = pl.read_parquet(path, columns=["status"])
    return {str(k): int(v) for k, v in df.group_by("status").len().sort("status").iter_rows()}


def read_lineage_block(cfg: RunConfig, tables: dict[str, pl.DataFrame | None]) -> Lineage:
    run = {
        "name": cfg.name,
        "config": str(cfg.source_path) if cfg.source_path else "",
        "data_root": str(cfg.data_root),
        "seed": cfg.seed,
        "real source": {"kind": cfg.real.kind, **cfg.real.params},
        "real images by status": _manifest_counts(cfg.layout.real_images),
        "stats": flat_dict(cfg.stats),
    }
    encoder = {"spec": dict(cfg.encoder.__dict__), **_store_attrs(cfg.layout.features(REAL))}
    encoder.pop("fingerprint", None)
    header = _sae_header(cfg)
    models: dict[str, dict[str, Any]] = {}
    for key, spec in cfg.models.items():
        lineage = read_lineage(cfg.layout.generated_images(key))
        models[key] = {
            "family": spec.family,
            "version": model_version(lineage) if lineage else "not generated yet",
            "images by status": _manifest_counts(cfg.layout.generated_images(key)),
            "params": spec.params,
            "lineage": lineage,
        }
    stamps: dict[str, dict[str, list[str]]] = {}
    for name, df in tables.items():
        if df is None:
            continue
        cols = [c for c in LINEAGE_COLUMNS if c in df.columns and df[c].null_count() < df.height]
        if cols:
            stamps[name] = {
                c: sorted(str(v) for v in df[c].unique().to_list() if v is not None) for c in cols
            }
    return Lineage(run, encoder, header, models, stamps)

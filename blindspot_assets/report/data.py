"""What the report reads: the results tables (whichever exist), run lineage, and defensive
column lookup, so a table that gained or renamed a column still shows what it has."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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
from blindspot_assets.store.schema import LINEAGE_COLUMNS
from blindspot_assets.store.tables import read_table

REQUIRED_TABLES = ("concept_stats", "blindspots", "concept_top_images")
OPTIONAL_TABLES = ("concept_labels", "datapoint_deltas", "memorization_candidates")


def load_table(tables_root: str | Path, name: str) -> pl.DataFrame | None:
    """All partitions of a table, or None when it has not been materialised."""
    try:
        return read_table(tables_root, name)
    except (FileNotFoundError, ValueError):
        return None


def pick(df: pl.DataFrame | None, *candidates: str, contains: Sequence[str] = ()) -> str | None:
    """The first of ``candidates`` that is a column, else the first column whose name contains
    every word of ``contains``."""
    if df is None:
        return None
    for c in candidates:
        if c in df.columns:
            return c
    if contains:
        for c in df.columns:
            low = c.lower()
            if all(w in low for w in contains):
                return c
    return None


def numeric(df: pl.DataFrame, column: str | None) -> np.ndarray:
    if column is None or column not in df.columns:
        return np.full(df.height, np.nan)
    try:
        return np.asarray(df[column].cast(pl.Float64, strict=False).to_numpy(), dtype=np.float64)
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        return np.full(df.height, np.nan)


def for_model(df: pl.DataFrame | None, model_key: str) -> pl.DataFrame | None:
    """Rows of one model: by ``model_key`` (or ``dataset``) when the table has it."""
    if df is None:
        return None
    col = pick(df, "model_key", "model", "dataset")
    if col is None:
        return df
    return df.filter(pl.col(col).cast(pl.String) == model_key)


def parse_concepts(value: object) -> list[int]:
    """Concept ids from a list column, a JSON list or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except json.JSONDecodeError:
            value = text.strip("[]").split(",")
    if isinstance(value, pl.Series):
        value = value.to_list()
    out = []
    if isinstance(value, Iterable):
        for v in value:
            if isinstance(v, dict):  # a struct: {"concept": k, ...}
                v = v.get("concept")
            try:
                out.append(int(str(v).strip()) if not isinstance(v, int) else v)
            except (TypeError, ValueError):
                continue
    return out


@dataclass
class Labels:
    """Concept id → its best caption terms (with scores when the table has them)."""

    terms: dict[int, list[tuple[str, float | None]]] = field(default_factory=dict)
    # Concept id → its name from a vision-language model (table concept_names), shown first.
    names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, df: pl.DataFrame | None, per_concept: int = 3) -> Labels:
        concept = pick(df, "concept", "concept_id")
        term = pick(df, "label", "term", "phrase", "word", "name", "top_term", contains=("term",))
        if df is None or concept is None or term is None:
            return cls()
        score = pick(df, "score", "association", "pmi", "npmi", "weight", contains=("score",))
        rank = pick(df, "rank", "label_rank", "term_rank")
        if rank is not None:
            df = df.sort(rank)
        elif score is not None:
            df = df.sort(score, descending=True, nulls_last=True)
        terms: dict[int, list[tuple[str, float | None]]] = {}
        scores = numeric(df, score) if score is not None else None
        for i, (c, t) in enumerate(zip(df[concept].to_list(), df[term].to_list(), strict=True)):
            if c is None or t is None:
                continue
            got = terms.setdefault(int(c), [])
            s = None if scores is None or not np.isfinite(scores[i]) else float(scores[i])
            if len(got) < per_concept and all(t != x for x, _ in got):
                got.append((str(t), s))
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
        cols = [c for c in LINEAGE_COLUMNS if c in df.columns]
        if cols:
            stamps[name] = {
                c: sorted(str(v) for v in df[c].unique().to_list() if v is not None) for c in cols
            }
    return Lineage(run, encoder, header, models, stamps)

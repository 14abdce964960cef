"""Concept names from a vision-language model (table ``concept_names``), for the report."""

from __future__ import annotations

import polars as pl


def model_names(df: pl.DataFrame | None) -> dict[int, str]:
    """Concept id → name; empty when the table is absent, empty (no labeller) or nameless."""
    if df is None:
        return {}
    out: dict[int, str] = {}
    for concept, name in df.select("concept", "name").iter_rows():
        if concept is not None and name:
            out[int(concept)] = str(name)
    return out

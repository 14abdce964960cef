"""Scoring against planted truth: did the statistics find the blindspots a world was built with?

A plant is an attribute value and a kind, e.g. ``{"suppressed": ["red"], "exaggerated":
["striped"]}``. A flagged concept *matches* a plant of its own kind when at least ``purity`` of
its ``top_n`` real images (by ξ) show the attribute value (manifest ``attributes``). A plant is
*found* when some flagged concept matches it. Recall = found plants / plants; precision@k = the
share of the k best-ranked flagged concepts that match some plant (over min(k, flagged)).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

KINDS = ("suppressed", "exaggerated")


def attribute_values(attributes: Any) -> set[str]:
    """The attribute values of one image: ``{"colors": ["red"], "count": 2}`` → {"red", "2"}."""
    if attributes is None:
        return set()
    if isinstance(attributes, str):
        attributes = json.loads(attributes) if attributes.strip() else {}
    values: set[str] = set()
    for value in attributes.values():
        items = value if isinstance(value, list | tuple | set) else [value]
        values.update(str(v) for v in items)
    return values


def score_planted(
    flagged_df: pl.DataFrame,
    top_images_df: pl.DataFrame,
    manifest_df: pl.DataFrame,
    planted: Mapping[str, Sequence[str]],
    top_n: int = 20,
    purity: float = 0.7,
    k_values: Sequence[int] = (1, 5, 10, 20),
    min_images: int = 5,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Recall of planted blindspots among flagged concepts and precision@k (see module doc).

    ``flagged_df``: ``flag_blindspots`` output (``rank``, ``concept``, ``kind``);
    ``top_images_df``: ``top_images_per_concept`` over the *real* codes; ``manifest_df``: the
    real manifest with ``image_id`` and ``attributes``. A concept with fewer than ``min_images``
    top images matches nothing.

    Returns ``(summary, per_concept)``: summary has ``n_plants``, ``n_found``, ``recall``,
    ``found`` ({"suppressed:red": bool}), ``first_rank`` (best rank of a matching concept, or
    None), ``precision_at`` ({k: value}), ``n_flagged``; per_concept has ``rank``, ``concept``,
    ``kind``, ``n_top_images``, ``best_attribute``, ``best_purity``, ``planted_match``.
    """
    unknown = sorted(set(planted) - set(KINDS))
    if unknown:
        raise ValueError(f"planted kinds must be {KINDS}, got {unknown}")
    values_by_id = {
        str(image_id): attribute_values(attrs)
        for image_id, attrs in manifest_df.select("image_id", "attributes").iter_rows()
    }
    top = top_images_df.filter(pl.col("rank") <= top_n)
    images_by_concept: dict[int, list[str]] = {}
    for concept, image_id in top.select("concept", "image_id").iter_rows():
        images_by_concept.setdefault(int(concept), []).append(str(image_id))
    rows = []
    flagged = flagged_df.sort("rank").select("rank", "concept", "kind")
    for rank, concept, kind in flagged.iter_rows():
        images = images_by_concept.get(int(concept), [])
        rows.append(
            {"rank": int(rank), "concept": int(concept), "kind": str(kind),
             "n_top_images": len(images),
             **_concept_match(images, values_by_id, planted.get(kind, []), purity, min_images)}
        )  # fmt: skip
    per_concept = pl.DataFrame(rows, schema=PER_CONCEPT_SCHEMA)
    return _planted_summary(per_concept, planted, k_values), per_concept


PER_CONCEPT_SCHEMA = {
    "rank": pl.Int64, "concept": pl.Int64, "kind": pl.String, "n_top_images": pl.Int64,
    "best_attribute": pl.String, "best_purity": pl.Float64, "planted_match": pl.String,
}  # fmt: skip


def _concept_match(
    images: list[str],
    values_by_id: Mapping[str, set[str]],
    plants: Sequence[str],
    purity: float,
    min_images: int,
) -> dict[str, Any]:
    """The attribute most shared by a concept's top images, and the plant it matches (the
    purest of its kind at ≥ ``purity``; none below ``min_images`` images)."""
    counts: dict[str, int] = {}
    for image_id in images:
        for value in values_by_id.get(image_id, set()):
            counts[value] = counts.get(value, 0) + 1
    purities = {v: c / len(images) for v, c in counts.items()} if images else {}
    best = max(purities.items(), key=lambda kv: (kv[1], kv[0]), default=(None, 0.0))
    match = None
    if len(images) >= min_images:
        hits = [(purities.get(v, 0.0), v) for v in plants if purities.get(v, 0.0) >= purity]
        match = max(hits)[1] if hits else None
    return {"best_attribute": best[0], "best_purity": float(best[1]), "planted_match": match}


def _planted_summary(
    per_concept: pl.DataFrame, planted: Mapping[str, Sequence[str]], k_values: Sequence[int]
) -> dict[str, Any]:
    """Recall over the plants, each plant's first matching rank, precision@k."""
    plants = [(kind, str(v)) for kind in KINDS for v in planted.get(kind, [])]
    found: dict[str, bool] = {}
    first_rank: dict[str, int | None] = {}
    for kind, value in plants:
        matching = (pl.col("kind") == kind) & (pl.col("planted_match") == value)
        ranks = per_concept.filter(matching)["rank"].to_list()
        found[f"{kind}:{value}"] = bool(ranks)
        first_rank[f"{kind}:{value}"] = min(ranks) if ranks else None
    precision_at = {}
    for k in k_values:
        head = per_concept.head(k)
        precision_at[int(k)] = (
            float(head["planted_match"].is_not_null().mean()) if head.height else 0.0  # type: ignore[arg-type]
        )
    n_found = sum(found.values())
    return {
        "n_plants": len(plants),
        "n_found": n_found,
        "recall": n_found / len(plants) if plants else float("nan"),
        "found": found,
        "first_rank": first_rank,
        "precision_at": precision_at,
        "n_flagged": per_concept.height,
    }


def planted_summary_frame(summary: Mapping[str, Any], model: str = "") -> pl.DataFrame:
    """The summary as a tidy frame: ``model``, ``metric``, ``key``, ``value``."""
    rows: list[dict[str, Any]] = [
        {"model": model, "metric": "recall", "key": "", "value": float(summary["recall"])},
        {"model": model, "metric": "n_flagged", "key": "", "value": float(summary["n_flagged"])},
    ]
    for key, ok in summary["found"].items():
        rows.append({"model": model, "metric": "found", "key": key, "value": float(ok)})
        rank = summary["first_rank"][key]
        rows.append({"model": model, "metric": "first_rank", "key": key,
                     "value": float(rank) if rank is not None else float("nan")})  # fmt: skip
    for k, value in summary["precision_at"].items():
        rows.append({"model": model, "metric": "precision_at", "key": str(k), "value": value})
    return pl.DataFrame(rows)

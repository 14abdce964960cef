"""Concept names without manual inspection: caption a concept's top real images, reduce.

For each concept to name (the flagged ones first, best rank over the models, then the others by
their strongest image), its top real images (table ``concept_top_images``) are loaded through
the run's image pipeline (``encoders/images.py``, as the encoder saw them), cut to the
encoder's centre view and — with ``labels.crop`` — cropped to a square around the patches where
the concept fires (the report's heat maps: ``report/images.concept_maps``), so the labeller
looks at the concept rather than at the whole scene. A labeller (``labels/vlm.py``, or any
object with ``caption(images)``) captions each crop; the captions are reduced to a short name:
a caption that most images share, else the content words found in the most captions, in the
order they are usually said.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from blindspot_assets.config import RunConfig
from blindspot_assets.encoders.geometry import encoder_crop_fraction
from blindspot_assets.encoders.images import ImagePolicy, policy_of_run
from blindspot_assets.labels.vlm import Labeller
from blindspot_assets.report.images import concept_maps, encoder_view
from blindspot_assets.store.images import ok_rows, read_manifest
from blindspot_assets.store.layout import REAL, TokenLayout
from blindspot_assets.store.rowstore import RowStore, store_exists
from blindspot_assets.store.tables import read_table

# Words a caption is made of that say nothing about what is shown ("arafed"/"araffe" are
# BLIP-large's well-known artefacts).
_STOP_TEXT = """a an the of on in at to with and or is are be been it its this that there these
those some two three several many very close up closeup view picture photo photograph image
images shot showing shows shown has have having from by for as over under near next into onto
arafed araffe arafly what which who"""
STOPWORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[a-z][a-z'-]*")


def words(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def content_words(caption: str) -> list[str]:
    return [w for w in words(caption) if w not in STOPWORDS and len(w) > 1]


def name_from_captions(captions: Sequence[str], max_words: int = 3) -> str:
    """A short name for what ``captions`` (of one concept's images) have in common.

    A caption shared by more than half of them is the name when it has at most ``max_words``
    content words; otherwise the content words found in the most captions (every word at least
    half as frequent as the most frequent one, at most ``max_words``), ordered by where they
    usually stand in a caption ("red circle", not "circle red").
    """
    said = [content_words(c) for c in captions]
    said = [ws for ws in said if ws]
    if not said:
        return ""
    common, count = Counter(" ".join(ws) for ws in said).most_common(1)[0]
    if 2 * count > len(said) and len(common.split()) <= max_words:
        return common
    in_captions: Counter[str] = Counter()
    positions: dict[str, list[float]] = defaultdict(list)
    for ws in said:
        in_captions.update(set(ws))
        for i, w in enumerate(ws):
            positions[w].append(i / len(ws))
    top = in_captions.most_common(1)[0][1]
    ranked = sorted(in_captions, key=lambda w: (-in_captions[w], float(np.mean(positions[w])), w))
    chosen = [w for w in ranked if 2 * in_captions[w] >= top][:max_words]
    return " ".join(sorted(chosen, key=lambda w: (float(np.mean(positions[w])), w)))


def concepts_to_name(top: pl.DataFrame, flagged: pl.DataFrame | None, n: int) -> list[int]:
    """``n`` concepts with top images: flagged first (best rank over every model), then the
    rest by the score of their strongest image."""
    have = set(top["concept"].cast(pl.Int64).to_list())
    order: list[int] = []
    if flagged is not None and flagged.height and "concept" in flagged.columns:
        rank = "rank" if "rank" in flagged.columns else "concept"
        best = (
            flagged.group_by("concept")
            .agg(pl.col(rank).min().alias("_best"))
            .sort("_best", "concept")
        )
        order = [int(c) for c in best["concept"].to_list() if int(c) in have]
    rest = (
        top.group_by("concept")
        .agg(pl.col("score").max().alias("_peak"))
        .sort(["_peak", "concept"], descending=[True, False])
    )
    seen = set(order)
    order += [int(c) for c in rest["concept"].to_list() if int(c) not in seen]
    return order[:n]


def highlight(
    image: Image.Image,
    heat: np.ndarray | None,
    crop_fraction: float,
    size: int,
    level: float = 0.5,
) -> Image.Image:
    """The encoder's centre view of ``image``, cut to a square around the patches where the
    concept reaches ``level`` × its peak (one patch of margin, at least a third of the view),
    resized to ``size`` × ``size``. Without a heat map (or an all-zero one): the whole view."""
    view = encoder_view(image, crop_fraction)
    if heat is not None and heat.size and float(heat.max()) > 0:
        g = heat.shape[0]
        ys, xs = np.nonzero(heat >= level * float(heat.max()))
        lo = np.array([ys.min(), xs.min()]) - 1
        hi = np.array([ys.max(), xs.max()]) + 2
        side = int(min(g, max(int((hi - lo).max()), math.ceil(g / 3))))
        centre = (lo + hi) / 2
        start = np.clip(np.round(centre - side / 2), 0, g - side).astype(int)
        px = view.width / g
        y0, x0 = (int(round(v * px)) for v in start)
        cut = int(round(side * px))
        view = view.crop((x0, y0, x0 + cut, y0 + cut))
    return view.resize((size, size), Image.Resampling.BICUBIC)


@dataclass
class ConceptImages:
    """The images a concept is named from, as the labeller sees them."""

    concept: int
    image_ids: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)


def gather_images(
    top: pl.DataFrame,
    concepts: Sequence[int],
    per_concept: int,
    paths: Mapping[str, Path],
    policy: ImagePolicy,
    crop_fraction: float,
    size: int,
    heat: Mapping[tuple[str, int], np.ndarray] | None = None,
) -> tuple[list[ConceptImages], int]:
    """Each concept's best ``per_concept`` images (by rank), highlighted; and how many listed
    images could not be read (missing or undecodable: skipped, counted)."""
    heat = heat or {}
    out: list[ConceptImages] = []
    unreadable = 0
    by_concept = top.sort("concept", "rank").group_by("concept", maintain_order=True)
    ids_of = {int(c[0]): df["image_id"].cast(pl.String).to_list() for c, df in by_concept}
    for concept in concepts:
        item = ConceptImages(int(concept))
        for image_id in ids_of.get(int(concept), [])[:per_concept]:
            path = paths.get(image_id)
            try:
                if path is None:
                    raise FileNotFoundError(image_id)
                image = policy.load(path)
            except (OSError, ValueError):
                unreadable += 1
                continue
            m = heat.get((image_id, int(concept)))
            item.image_ids.append(image_id)
            item.images.append(highlight(image, m, crop_fraction, size))
        out.append(item)
    return out, unreadable


def name_concepts(
    labeller: Labeller,
    items: Sequence[ConceptImages],
    name_words: int = 3,
    chunk: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Caption every image of every concept (``chunk`` images per call) and name each concept.

    Columns: ``concept``, ``name``, ``captions``, ``image_ids``, ``n_images``, ``model_id``,
    ``model_version``, ``prompt``. A concept none of whose images could be read is left out.
    """
    flat = [(i, im) for i, item in enumerate(items) for im in item.images]
    captions: dict[int, list[str]] = defaultdict(list)
    for a in range(0, len(flat), chunk):
        part = flat[a : a + chunk]
        for (i, _), text in zip(part, labeller.caption([im for _, im in part]), strict=True):
            captions[i].append(text)
        if progress:
            progress(min(a + chunk, len(flat)), len(flat))
    rows = [
        {
            "concept": item.concept,
            "name": name_from_captions(captions[i], name_words),
            "captions": captions[i],
            "image_ids": item.image_ids,
            "n_images": len(item.image_ids),
        }
        for i, item in enumerate(items)
        if item.images
    ]
    return pl.DataFrame(rows, schema=_SCHEMA).with_columns(
        pl.lit(labeller.model_id).alias("model_id"),
        pl.lit(labeller.version).alias("model_version"),
        pl.lit(labeller.prompt).alias("prompt"),
    )


_SCHEMA: dict[str, pl.DataType] = {
    "concept": pl.Int64(),
    "name": pl.String(),
    "captions": pl.List(pl.String),
    "image_ids": pl.List(pl.String),
    "n_images": pl.Int64(),
}


def empty_names() -> pl.DataFrame:
    """A ``concept_names`` table with no rows (no labeller configured)."""
    extra = {c: pl.String() for c in ("model_id", "model_version", "prompt", "sae_version")}
    return pl.DataFrame(schema={**_SCHEMA, **extra})


def _flagged(cfg: RunConfig) -> pl.DataFrame | None:
    try:
        return read_table(cfg.layout.tables, "blindspots")
    except (FileNotFoundError, ValueError):
        return None


def name_run_concepts(
    cfg: RunConfig,
    labeller: Labeller,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The ``concept_names`` rows of a run (without lineage stamps) and what to report."""
    t0 = time.perf_counter()
    spec = cfg.labels
    top = read_table(cfg.layout.tables, "concept_top_images", REAL)
    flagged = _flagged(cfg)
    concepts = concepts_to_name(top, flagged, spec.concepts)
    real_dir = cfg.layout.real_images
    manifest = ok_rows(read_manifest(real_dir))
    paths = {
        str(i): real_dir / str(p)
        for i, p in zip(manifest["image_id"].to_list(), manifest["path"].to_list(), strict=True)
    }
    top = top.filter(pl.col("rank") <= spec.images_per_concept)
    heat: dict[tuple[str, int], np.ndarray] = {}
    codes = cfg.layout.codes(REAL)
    if spec.crop and store_exists(codes):
        wanted: dict[str, set[int]] = defaultdict(set)
        chosen = top.filter(pl.col("concept").is_in(concepts))
        for c, i in chosen.select("concept", "image_id").rows():
            wanted[str(i)].add(int(c))
        attrs: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            attrs = dict(RowStore.open(cfg.layout.features(REAL)).attrs)
        n_tokens = int(RowStore.open(codes).array("token_idx").shape[1])
        heat = concept_maps(codes, wanted, TokenLayout.infer(n_tokens, attrs))
    crop_fraction = encoder_crop_fraction(cfg.layout, cfg.encoder)
    items, unreadable = gather_images(
        top,
        concepts,
        spec.images_per_concept,
        paths,
        policy_of_run(cfg.images, real_dir),
        crop_fraction,
        spec.image_px,
        heat,
    )
    names = name_concepts(labeller, items, spec.name_words, progress=progress)
    n_images = int(names["n_images"].sum()) if names.height else 0
    seconds = time.perf_counter() - t0
    meta = {
        "n_concepts": names.height,
        "n_flagged_named": len(
            set(names["concept"].to_list())
            & set(flagged["concept"].to_list() if flagged is not None else [])
        ),
        "n_images_captioned": n_images,
        "n_images_unreadable": unreadable,
        "n_concepts_without_images": len(items) - names.height,
        "cropped_to_concept": bool(heat),
        "seconds": round(seconds, 2),
        "images_per_s": round(n_images / seconds, 2) if seconds > 0 else 0.0,
    }
    return names, meta

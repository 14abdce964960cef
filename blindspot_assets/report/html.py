"""Render the results tables and images into ``report/index.html`` (one page, opens offline).

The page shows, per generative model: the δ histogram, real-vs-generated energy per concept and
concept frequency against relative difference (blindspots highlighted); the top suppressed and
exaggerated concepts with their names, δ, ΔE with its interval and q-value, each with a gallery
of top-activating images beside their partners from the same captions, the concept's token
activation drawn over each; the most different datapoint pairs; memorisation candidates. Across
models: a summary, the correlation matrix of relative differences, the datapoint-distance
distributions. Last, the lineage of everything on the page.

Optional tables (labels, datapoint deltas, memorisation, correlations) are shown when present and
read by column meaning, not by a fixed schema.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.encoders.geometry import encoder_crop_fraction
from blindspot_assets.report import analyses, preview, svg
from blindspot_assets.report import verification as verification_view
from blindspot_assets.report.changes import changes_sections
from blindspot_assets.report.data import (
    OPTIONAL_TABLES,
    REQUIRED_TABLES,
    Labels,
    Lineage,
    for_model,
    load_table,
    numeric,
    parse_concepts,
    pick,
    read_lineage_block,
)
from blindspot_assets.report.images import ImageWriter, concept_maps
from blindspot_assets.report.names import model_names
from blindspot_assets.report.page import render_page
from blindspot_assets.stats.significance import expected_false_flags
from blindspot_assets.store.layout import REAL, TokenLayout
from blindspot_assets.store.rowstore import RowStore, store_exists
from blindspot_assets.store.tables import list_tables

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    n_models: int
    n_blindspots: int
    n_images: int
    n_concept_cards: int = 0
    seconds: float = 0.0
    # Markdown for the materialisation's metadata: top blindspots and a heat-map thumbnail grid.
    preview_md: str = ""


@dataclass(frozen=True)
class ReportOptions:
    """How much the page shows. Defaults keep the demo page small and a 32k-concept run fast."""

    per_kind: int = 8  # concept cards (with galleries) per kind per model
    images_per_concept: int = 4  # gallery pairs per concept card
    max_table_rows: int = 300  # rows of the flagged-concepts table per model
    n_datapoints: int = 8  # most different real/generated pairs shown per model
    n_memorization: int = 12  # memorisation candidates shown per model
    thumb_px: int = 128  # side of thumbnails and heat maps, in pixels


@dataclass
class Tile:
    """One image on the page (a plain thumbnail or a heat map), filled in when written."""

    dataset: str
    image_id: str
    concept: int | None = None
    caption: str = ""
    src: str | None = None
    note: str = ""


@dataclass
class ConceptCard:
    model_key: str
    concept: int
    kind: str
    name: str
    stats: dict[str, Any]
    gallery_title: str
    pairs: list[tuple[Tile, Tile]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"m-{self.model_key}-c{self.concept}"


@dataclass
class ModelSection:
    key: str
    figures: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    cards: dict[str, list[ConceptCard]] = field(default_factory=dict)
    flagged_columns: list[str] = field(default_factory=list)
    flagged_rows: list[dict[str, Any]] = field(default_factory=list)
    n_flagged: int = 0
    datapoints: list[dict[str, Any]] = field(default_factory=list)
    datapoint_columns: dict[str, str | None] = field(default_factory=dict)
    memorization: list[dict[str, Any]] = field(default_factory=list)
    memorization_total: int = 0
    notes: list[str] = field(default_factory=list)
    # significant flags specific to this model, and those shared with the others' consensus
    # (None: no consensus in this run)
    specific: list[dict[str, Any]] | None = None
    shared: list[dict[str, Any]] = field(default_factory=list)


def _sigmoid_markers(cfg: RunConfig) -> dict[float, str]:
    params = cfg.stats.params
    return {params.suppressed_below: "suppressed", params.exaggerated_above: "exaggerated"}


def _skewness(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    if x.size < 3 or float(x.std()) == 0:
        return float("nan")
    d = x - x.mean()
    return float((d**3).mean() / (d**2).mean() ** 1.5)


def _concept_tooltip(row: dict[str, Any], name: str) -> str:
    label = f" ({name})" if name else ""
    return (
        f"concept {row.get('concept')}{label}: δ={svg.fmt(row.get('delta'))}, "
        f"ΔE={svg.fmt(row.get('delta_energy'))}, q={svg.fmt(row.get('q_value'))}"
    )


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _figures(
    cfg: RunConfig, key: str, stats: pl.DataFrame, flagged: pl.DataFrame, labels: Labels
) -> list[str]:
    figs = []
    delta = numeric(stats, pick(stats, "delta"))
    figs.append(
        svg.histogram_svg(
            delta,
            title=f"δ of every concept — {key}",
            xlabel="δ = sigmoid(ΔE / T)",
            value_range=(0.0, 1.0),
            markers=_sigmoid_markers(cfg),
        )
    )
    sig_col = pick(flagged, "significant")
    flagged_rows = list(flagged.iter_rows(named=True))

    def points(x_col: str, y_col: str) -> list[svg.ScatterPoint]:
        """The flagged concepts, coloured by kind, outlined when significant."""
        return [
            svg.ScatterPoint(
                _num(r.get(x_col)),
                _num(r.get(y_col)),
                svg.SUPPRESSED if r.get("kind") == "suppressed" else svg.EXAGGERATED,
                _concept_tooltip(r, labels.name(int(r["concept"]))),
                bool(r.get(sig_col)) if sig_col else False,
            )
            for r in flagged_rows
            if x_col in r and y_col in r
        ]

    def scatter(x_col: str, y_col: str, **kwargs: Any) -> str:
        x, y = numeric(stats, x_col), numeric(stats, y_col)
        return svg.scatter_svg(x, y, highlight=points(x_col, y_col), **kwargs)

    legend = {"suppressed": svg.SUPPRESSED, "exaggerated": svg.EXAGGERATED, "other": svg.NEUTRAL}
    e_real, e_gen = pick(stats, "energy_real"), pick(stats, "energy_gen")
    if e_real and e_gen:
        title = f"Energy per concept, real vs generated — {key}"
        figs.append(
            scatter(e_real, e_gen, title=title, xlabel="E(real)", ylabel=f"E({key})",
                    log_x=True, log_y=True, diagonal=True, legend=legend)
        )  # fmt: skip
    freq = pick(stats, "image_freq_real", "nb_fire_real")
    rel = pick(stats, "relative")
    if freq and rel:
        xlabel = "fraction of real images where it fires"
        if freq != "image_freq_real":
            xlabel = "token codes firing (real)"
        title = f"Concept frequency vs relative difference — {key}"
        figs.append(
            scatter(freq, rel, title=title, xlabel=xlabel, ylabel="relative difference", log_x=True)
        )
    return figs


_STAT_KEYS = (
    ("delta", ("delta",)),
    ("delta_ci", ("delta_ci_low", "delta_ci_high")),
    ("delta_energy", ("delta_energy",)),
    ("delta_energy_ci", ("delta_energy_ci_low", "delta_energy_ci_high")),
    ("relative", ("relative",)),
    ("effect_size", ("effect_size",)),
    ("p_value", ("p_value",)),
    ("q_value", ("q_value",)),
    ("energy_real", ("energy_real",)),
    ("energy_gen", ("energy_gen",)),
    ("image_freq_real", ("image_freq_real",)),
    ("paper_verdict", ("paper_verdict",)),
    ("significant", ("significant",)),
    ("verification_status", ("verification_status",)),
)


def _card_stats(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, cols in _STAT_KEYS:
        if all(c in row for c in cols):
            out[key] = tuple(row[c] for c in cols) if len(cols) > 1 else row[cols[0]]
    return out


def _top_rows(flagged: pl.DataFrame, kind: str, n: int) -> pl.DataFrame:
    rows = flagged.filter(pl.col("kind") == kind) if "kind" in flagged.columns else flagged[:0]
    if "rank" in rows.columns:
        rows = rows.sort("rank")
    elif "delta_energy" in rows.columns:
        rows = rows.sort("delta_energy", descending=kind == "exaggerated")
    return rows.head(n)


def _top_images(top: pl.DataFrame | None, concept: int, dataset: str, n: int) -> list[str]:
    if top is None or not {"concept", "image_id"} <= set(top.columns):
        return []
    rows = top.filter(pl.col("concept") == concept)
    if "dataset" in rows.columns:
        rows = rows.filter(pl.col("dataset") == dataset)
    if "rank" in rows.columns:
        rows = rows.sort("rank")
    elif "score" in rows.columns:
        rows = rows.sort("score", descending=True)
    return [str(i) for i in rows["image_id"].head(n).to_list()]


def _cards(
    key: str,
    flagged: pl.DataFrame,
    top: pl.DataFrame | None,
    labels: Labels,
    writer: ImageWriter,
    opts: ReportOptions,
) -> dict[str, list[ConceptCard]]:
    cards: dict[str, list[ConceptCard]] = {}
    for kind in ("suppressed", "exaggerated"):
        cards[kind] = []
        for row in _top_rows(flagged, kind, opts.per_kind).iter_rows(named=True):
            concept = int(row["concept"])
            # Suppressed: where the concept is in real images, and what the model drew instead.
            # Exaggerated: where the model puts it, and the real images of the same captions.
            lead, other = (REAL, key) if kind == "suppressed" else (key, REAL)
            ids = _top_images(top, concept, lead, opts.images_per_concept)
            if not ids and kind == "exaggerated":
                lead, other = REAL, key
                ids = _top_images(top, concept, lead, opts.images_per_concept)
            title = (
                f"left: its top real images; right: what {key} drew from the same captions"
                if lead == REAL
                else f"right: its top {key} images; left: the real images of the same captions"
            )
            card = ConceptCard(key, concept, kind, labels.name(concept), _card_stats(row), title)
            for image_id in ids:
                caption = writer.caption(lead, image_id) or writer.caption(other, image_id)
                real_tile = Tile(REAL, image_id, concept, caption)
                gen_tile = Tile(key, image_id, concept, caption)
                card.pairs.append((real_tile, gen_tile))
            cards[kind].append(card)
    return cards


def _fill_heat_maps(
    cfg: RunConfig, cards: list[ConceptCard], writer: ImageWriter, progress: ProgressFn | None
) -> None:
    """Compute every card's token heat maps (one pass over each codes store) and write them."""
    wanted: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for card in cards:
        for pair in card.pairs:
            for tile in pair:
                wanted[tile.dataset][tile.image_id].add(card.concept)
    features_attrs: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        features_attrs = RowStore.open(cfg.layout.features(REAL)).attrs
    maps: dict[tuple[str, str, int], np.ndarray] = {}
    for dataset, per_image in wanted.items():
        path = cfg.layout.codes(dataset)
        if not store_exists(path):
            continue
        n_tokens = int(RowStore.open(path).array("token_idx").shape[1])
        layout = TokenLayout.infer(n_tokens, features_attrs)
        for (image_id, concept), m in concept_maps(path, per_image, layout).items():
            maps[(dataset, image_id, concept)] = m
    total = sum(len(c.pairs) * 2 for c in cards)
    done = 0
    for card in cards:
        got = [maps.get((t.dataset, t.image_id, card.concept)) for p in card.pairs for t in p]
        vmax = max([float(m.max()) for m in got if m is not None] + [0.0])
        for pair in card.pairs:
            for tile in pair:
                heat = maps.get((tile.dataset, tile.image_id, card.concept))
                tile.src = writer.heat(tile.dataset, tile.image_id, card.concept, heat, vmax)
                if heat is None:
                    tile.note = "no codes"
                else:
                    tile.note = f"peak {svg.fmt(float(heat.max()))}"
                done += 1
        if progress:
            progress(done, total)


def _flagged_table(
    key: str, flagged: pl.DataFrame, labels: Labels, carded: set[int], opts: ReportOptions
) -> tuple[list[str], list[dict[str, Any]]]:
    preferred = [
        "rank", "concept", "name", "kind", "delta", "delta_ci_low", "delta_ci_high",
        "delta_energy", "delta_energy_ci_low", "delta_energy_ci_high", "relative",
        "change_lcb", "effect_size", "q_value", "paper_verdict", "significant", "specific",
        "within_nuisance", "verification_status",
    ]  # fmt: skip
    df = flagged.sort("rank") if "rank" in flagged.columns else flagged
    df = df.head(opts.max_table_rows)
    named = bool(labels.terms or labels.names)
    cols = [c for c in preferred if c in df.columns or (c == "name" and named)]
    rows = []
    for r in df.iter_rows(named=True):
        concept = int(r["concept"])
        row = {c: r.get(c) for c in cols}
        row["name"] = labels.name(concept)
        row["_anchor"] = f"m-{key}-c{concept}" if concept in carded else ""
        rows.append(row)
    return cols, rows


def _specific_view(
    flagged: pl.DataFrame, labels: Labels, opts: ReportOptions
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """The significant flags split into model-specific and shared (``stats/specific.py``)."""
    if "specific" not in flagged.columns or flagged["specific"].is_null().all():
        return None, []
    significant = flagged.filter(pl.col("significant")).sort("rank")
    cols = ["concept", "kind", "rank", "change_lcb"]

    def rows(df: pl.DataFrame) -> list[dict[str, Any]]:
        out = df.select(cols).head(opts.max_table_rows).to_dicts()
        return [{**r, "name": labels.name(int(r["concept"]))} for r in out]

    return rows(significant.filter(pl.col("specific"))), rows(
        significant.filter(~pl.col("specific").fill_null(False))
    )


def _datapoints(
    key: str, df: pl.DataFrame | None, labels: Labels, writer: ImageWriter, opts: ReportOptions
) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    df = for_model(df, key)
    if df is None or df.is_empty():
        return [], {}
    image = pick(df, "image_id", "real_image_id", contains=("image", "id"))
    dist = pick(
        df, "l2", "distance", "xi_distance", "l2_distance", "delta_norm", contains=("dist",)
    )
    missing = pick(df, "missing_concepts", "most_missing", contains=("missing",))
    added = pick(df, "added_concepts", "most_added", contains=("added",))
    cols = {"image": image, "distance": dist, "missing": missing, "added": added}
    if image is None:
        return [], cols
    if dist is not None:
        df = df.sort(dist, descending=True, nulls_last=True)
    out = []
    for r in df.head(opts.n_datapoints).iter_rows(named=True):
        image_id = str(r[image])
        caption = writer.caption(REAL, image_id) or writer.caption(key, image_id)
        real = Tile(REAL, image_id, None, caption, writer.thumbnail(REAL, image_id))
        gen_id = str(r.get("gen_image_id") or image_id)  # a sample ≥ 1 has its own id
        gen = Tile(key, gen_id, None, caption, writer.thumbnail(key, gen_id))

        def named(col: str | None, row: dict[str, Any] = r) -> list[tuple[int, str]]:
            ids = parse_concepts(row.get(col)) if col else []
            return [(c, labels.short(c)) for c in ids[:8]]

        out.append(
            {
                "real": real,
                "gen": gen,
                "distance": r.get(dist) if dist else None,
                "missing": named(missing),
                "added": named(added),
            }
        )
    return out, cols


def _memorization(
    key: str, df: pl.DataFrame | None, writer: ImageWriter, opts: ReportOptions
) -> tuple[list[dict[str, Any]], int]:
    df = for_model(df, key)
    if df is None or df.is_empty():
        return [], 0
    gen = pick(df, "gen_image_id", "generated_image_id", "image_id", contains=("gen", "id"))
    real = pick(
        df, "real_image_id", "nearest_real_image_id", "nearest_real_id", "nearest_image_id",
        contains=("real", "id"),
    )  # fmt: skip
    dist = pick(df, "distance", "nn_distance", contains=("dist",))
    thr = pick(df, "threshold", contains=("threshold",))
    candidate = pick(df, "is_candidate")
    # every pair may be tabled: show the lowest distances, candidates marked; count candidates
    n_candidates = int(df[candidate].fill_null(False).sum()) if candidate else df.height
    own = pick(df, "is_own_pair")
    if gen is None:
        return [], n_candidates
    if dist is not None:
        df = df.sort(dist, nulls_last=True)
    out = []
    for r in df.head(opts.n_memorization).iter_rows(named=True):
        gen_id = str(r[gen])
        real_id = str(r[real]) if real and r.get(real) is not None else None
        out.append(
            {
                "gen": Tile(key, gen_id, None, writer.caption(key, gen_id),
                            writer.thumbnail(key, gen_id)),
                "real": Tile(REAL, real_id, None, writer.caption(REAL, real_id),
                             writer.thumbnail(REAL, real_id)) if real_id else None,
                "distance": r.get(dist) if dist else None,
                "threshold": r.get(thr) if thr else None,
                "own_pair": bool(r.get(own)) if own else None,
                "candidate": bool(r.get(candidate)) if candidate else True,
                "evidence": r.get("evidence") or "",
                "concept_distance": r.get("concept_distance"),
                # "reproduced on s of k seeds" when the model made several images per caption
                "seeds": (r.get("reproduced_seeds"), r["n_seeds"])
                if (r.get("n_seeds") or 0) > 1 else None,
                "across_seeds": bool(r.get("reproduced_across_seeds")),
            }
        )  # fmt: skip
    return out, n_candidates


def _correlations(
    tables_root: str | Path, stats: pl.DataFrame | None, models: list[str]
) -> tuple[list[str], np.ndarray, str] | None:
    """(models, matrix, source) of the Pearson correlation of relative differences."""
    for name in [t for t in list_tables(tables_root) if "corr" in t]:
        df = load_table(tables_root, name)
        if df is None or df.is_empty():
            continue
        strings = [c for c, t in df.schema.items() if t == pl.String and c not in ("run_id",)]
        value = pick(df, "pearson_r", "pearson", "r", "correlation", contains=("pearson",))
        if len(strings) >= 2 and value:
            a, b = strings[0], strings[1]
            names = sorted(set(df[a].to_list()) | set(df[b].to_list()))
            m = np.eye(len(names))
            for x, y, v in df.select(a, b, value).iter_rows():
                i, j = names.index(x), names.index(y)
                m[i, j] = m[j, i] = float(v) if v is not None else np.nan
            return names, m, f"table {name}"
    if stats is None or not {"model_key", "concept", "relative"} <= set(stats.columns):
        return None
    present = [m for m in models if m in set(stats["model_key"].to_list())]
    if len(present) < 2:
        return None
    wide = stats.pivot(
        on="model_key", index="concept", values="relative", aggregate_function="first"
    )
    mat = np.array([numeric(wide, m) for m in present])
    n = len(present)
    corr = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            ok = np.isfinite(mat[i]) & np.isfinite(mat[j])
            if ok.sum() > 2 and mat[i][ok].std() > 0 and mat[j][ok].std() > 0:
                corr[i, j] = corr[j, i] = float(np.corrcoef(mat[i][ok], mat[j][ok])[0, 1])
            else:
                corr[i, j] = corr[j, i] = np.nan
    return present, corr, "computed by the report from concept_stats.relative"


def _frequency_figure(tables_root: str | Path) -> tuple[str, str] | None:
    """Mean relative difference per concept-frequency bin, one line per model (if tabled)."""
    df = load_table(tables_root, "frequency_vs_relative")
    model = pick(df, "model_key", "model")
    y = pick(df, "mean_relative", "median_relative", contains=("relative",))
    lo, hi = pick(df, "freq_low"), pick(df, "freq_high")
    if df is None or df.is_empty() or model is None or y is None or lo is None or hi is None:
        return None
    series = {}
    for key in df[model].unique(maintain_order=True).to_list():
        part = df.filter(pl.col(model) == key)
        mid = np.sqrt(np.maximum(numeric(part, lo), 1e-12) * np.maximum(numeric(part, hi), 1e-12))
        series[str(key)] = (mid, numeric(part, y))
    figure = svg.lines_svg(
        series,
        title="Relative difference by concept frequency",
        xlabel="fraction of real images where the concept fires (bin)",
        ylabel=y.replace("_", " "),
        log_x=True,
    )
    return figure, (
        "Do rare concepts get suppressed more? Concepts binned by how often they fire in the "
        "real images (table frequency_vs_relative)."
    )


def control_flags(cfg: RunConfig, blind_all: pl.DataFrame | None) -> list[dict[str, Any]]:
    """Flags per null control model (its false-flag floor): ``key``, ``paper``, ``significant``;
    None counts where the control has no blindspots table yet."""
    rows = []
    for key in cfg.controls:
        flagged = for_model(blind_all, key)
        row: dict[str, Any] = {"key": key, "paper": None, "significant": None}
        if flagged is not None and {"paper_verdict", "significant"} <= set(flagged.columns):
            row["paper"] = int(flagged["paper_verdict"].sum())
            row["significant"] = int(flagged["significant"].sum())
        rows.append(row)
    return rows


def _model_counts(
    cfg: RunConfig,
    stats: pl.DataFrame,
    flagged: pl.DataFrame,
    summaries: pl.DataFrame | None,
    controls: list[dict[str, Any]],
) -> dict[str, Any]:
    counts: dict[str, Any] = {"concepts": stats.height}
    for verdict in ("paper_verdict", "significant"):
        if verdict in flagged.columns and "kind" in flagged.columns:
            for kind in ("suppressed", "exaggerated"):
                n = flagged.filter((pl.col("kind") == kind) & pl.col(verdict)).height
                counts[f"{kind} ({'paper' if verdict == 'paper_verdict' else 'significant'})"] = n
        elif "kind" in flagged.columns:
            for kind in ("suppressed", "exaggerated"):
                counts[kind] = flagged.filter(pl.col("kind") == kind).height
    skew_col = pick(summaries, "delta_skewness", "skewness", contains=("skew",))
    if summaries is not None and skew_col is not None:
        counts["δ skewness"] = float(numeric(summaries, skew_col)[0]) if summaries.height else None
    else:
        counts["δ skewness"] = _skewness(numeric(stats, pick(stats, "delta")))
    spearman = pick(summaries, contains=("spearman",))
    if summaries is not None and spearman is not None and summaries.height:
        counts["freq–relative ρ"] = float(numeric(summaries, spearman)[0])
    delta = numeric(stats, pick(stats, "delta"))
    counts["median δ"] = float(np.nanmedian(delta)) if np.isfinite(delta).any() else None
    n_pairs = pick(stats, "n_pairs")
    if n_pairs and stats.height:
        counts["pairs"] = int(stats[n_pairs][0])
    if "significant" in stats.columns:
        n_sig = int(stats["significant"].sum())
        counts["expected false flags"] = expected_false_flags(n_sig, cfg.stats.params.alpha)
    done = [c for c in controls if c["significant"] is not None]
    counts["control floor"] = max(max(c["significant"], c["paper"]) for c in done) if done else None
    # does the concept vocabulary cover this model's images as well as the real ones?
    if summaries is not None and summaries.height and "recon_r2_gen" in summaries.columns:
        row = summaries.row(0, named=True)
        counts["SAE R² real / gen"] = f"{row['recon_r2_real']:.2f} / {row['recon_r2_gen']:.2f}"
        counts["vocabulary gap"] = "yes" if row["vocabulary_gap"] else "no"
    return counts | distribution_counts(summaries)


# model_summaries' distribution metrics (stats/distribution.py) and their overview headers
DISTRIBUTION_COUNTS = (
    ("fd_dinov2", "FD (CLS)"), ("precision", "precision"), ("recall", "recall"),
    ("density", "density"), ("coverage", "coverage"),
)  # fmt: skip


def distribution_counts(summaries: pl.DataFrame | None) -> dict[str, Any]:
    """A model's distribution metrics from its ``model_summaries`` row, each as "value [low,
    high]" (the bootstrap interval), and the sample sizes; {} before they are computed."""
    if summaries is None or not summaries.height or "fd_dinov2" not in summaries.columns:
        return {}
    row = summaries.row(0, named=True)
    out: dict[str, Any] = {}
    for column, header in DISTRIBUTION_COUNTS:
        low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
        interval = f" [{svg.fmt(low)}, {svg.fmt(high)}]" if low is not None else ""
        out[header] = f"{svg.fmt(row[column])}{interval}"
    out["images real / gen (distribution)"] = f"{row.get('n_real')} / {row.get('n_generated')}"
    return out


def _summary_table(tables_root: str | Path) -> pl.DataFrame | None:
    """A per-model summary table from the statistics, if one exists (for δ skewness)."""
    for name in [t for t in list_tables(tables_root) if "summar" in t]:
        df = load_table(tables_root, name)
        if df is not None and pick(df, contains=("skew",)):
            return df
    return None


# shown in sections of their own
ANALYSIS_TABLES = ("concept_map", "variant_comparisons", "blindspot_changes")


def _analysis_sections(
    cfg: RunConfig, root: str | Path, tables: dict[str, pl.DataFrame | None], labels: Labels
) -> list[tuple[str, str, str]]:
    """(id, title, markup) of the sections after the models: concept map, model vs variant."""
    out = []
    concept_map = analyses.concept_map_html(
        load_table(root, "concept_map"),
        tables["concept_stats"],
        tables["blindspots"],
        list(cfg.models),
        labels,
    )
    if concept_map is not None:
        out.append(("concept-map-section", "Concept map", concept_map))
    variants = analyses.variant_html(
        load_table(root, "variant_comparisons"), tables["datapoint_deltas"]
    )
    if variants is not None:
        out.append(("variants", "Model vs variant", variants))
    out += changes_sections(load_table(root, "blindspot_changes"), labels, cfg.stats.fail_on)
    return out


def _other_tables(tables_root: str | Path, shown: set[str]) -> list[dict[str, Any]]:
    out = []
    for name in list_tables(tables_root):
        if name in shown:
            continue
        df = load_table(tables_root, name)
        if df is None:
            continue
        head = df if df.height <= 30 else df.head(10)
        out.append({"name": name, "rows": df.height, "columns": df.columns, "head": head})
    return out


def _preview(sections: list[ModelSection], out_dir: Path) -> str:
    rows: list[dict[str, object]] = []
    paths: list[Path] = []
    captions: list[str] = []
    for section in sections:
        for kind, cards in section.cards.items():
            for i, card in enumerate(cards[:3]):
                rows.append({"model": section.key, "kind": kind, "concept": card.concept,
                             "name": card.name, **card.stats})  # fmt: skip
                for real, gen in card.pairs[:2] if i == 0 else []:
                    for tile in (real, gen):
                        if tile.src:
                            paths.append(out_dir / tile.src)
                            captions.append(f"{tile.dataset} c{card.concept}")
    grid = preview.thumbnail_grid_md(paths, captions, px=64, per_row=8, max_images=16)
    return (
        f"{preview.blindspots_md(rows, max_rows=12)}\n\n"
        f"Top concept of each kind, real | generated, with its activation:\n\n{grid}"
    )


def _swap_in(out_dir: Path, staging: Path, page_tmp: Path, page: Path) -> None:
    """Replace the previous report's images and page by the new ones: renames only, so it
    needs no space and cannot half-fail on a full disk."""
    old = out_dir / ".img.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out_dir / "img").exists():
        os.replace(out_dir / "img", old)
    (staging / "img").mkdir(parents=True, exist_ok=True)
    os.replace(staging / "img", out_dir / "img")
    os.replace(page_tmp, page)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class _SectionInputs:
    """What every model's section is drawn from besides its own statistics."""

    cfg: RunConfig
    tables: dict[str, pl.DataFrame | None]
    labels: Labels
    writer: ImageWriter
    opts: ReportOptions
    summary: pl.DataFrame | None


def _model_section(
    key: str,
    stats: pl.DataFrame,
    flagged: pl.DataFrame | None,
    inputs: _SectionInputs,
    controls: list[dict[str, Any]],
) -> ModelSection:
    """One model's section: counts, figures, concept cards, flagged table, datapoints and
    memorisation candidates."""
    cfg, tables, labels, writer, opts = (
        inputs.cfg, inputs.tables, inputs.labels, inputs.writer, inputs.opts
    )  # fmt: skip
    flagged = flagged if flagged is not None else stats[:0]
    top = tables["concept_top_images"]
    section = ModelSection(key)
    section.counts = _model_counts(cfg, stats, flagged, inputs.summary, controls)
    section.figures = _figures(cfg, key, stats, flagged, labels)
    section.cards = _cards(key, flagged, top, labels, writer, opts)
    carded = {c.concept for cs in section.cards.values() for c in cs}
    section.flagged_columns, section.flagged_rows = _flagged_table(
        key, flagged, labels, carded, opts
    )
    section.n_flagged = flagged.height
    section.specific, section.shared = _specific_view(flagged, labels, opts)
    section.datapoints, section.datapoint_columns = _datapoints(
        key, tables["datapoint_deltas"], labels, writer, opts
    )
    section.memorization, section.memorization_total = _memorization(
        key, tables["memorization_candidates"], writer, opts
    )
    if top is None:
        section.notes.append("concept_top_images has not been materialised: no galleries.")
    return section


def _cross_figures(
    root: str | Path, stats_all: pl.DataFrame | None, models: list[str],
    distances: dict[str, np.ndarray],
) -> list[tuple[str, str]]:  # fmt: skip
    """The figures across models, each with its caption."""
    cross: list[tuple[str, str]] = []
    corr = _correlations(root, stats_all, models)
    if corr is not None:
        names, matrix, source = corr
        cross.append(
            (
                svg.matrix_svg(names, matrix, title="Pearson r of relative differences"),
                f"Correlation of per-concept relative differences between models ({source}).",
            )
        )
    for figure in (_frequency_figure(root), analyses.token_frequency_figure(stats_all, models)):
        if figure is not None:
            cross.append(figure)
    if distances:
        title, xlabel = "‖ξ(x′) − ξ(x)‖ per datapoint", "‖ξ(x′) − ξ(x)‖"
        cross.append(
            (
                svg.step_histograms_svg(distances, title=title, xlabel=xlabel),
                "Per-datapoint distance between the concept vectors of a real image and the "
                "image generated from its caption, per model.",
            )
        )
    return cross


def build_report(
    cfg: RunConfig,
    out_dir: Path,
    options: ReportOptions | None = None,
    progress: ProgressFn | None = None,
) -> ReportSummary:
    """Write ``out_dir/index.html`` and its images (``out_dir/img/…``, relative paths)."""
    t0 = time.perf_counter()
    opts = options or ReportOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The new report is built beside the old one (images in a staging folder, the page under a
    # temporary name) and swapped in only when complete: a build that fails — a full disk, a
    # crash — leaves the previous report whole.
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)  # what a failed build left
    root = cfg.layout.tables
    tables = {name: load_table(root, name) for name in (*REQUIRED_TABLES, *OPTIONAL_TABLES)}
    stats_all, blind_all, top = (tables[n] for n in REQUIRED_TABLES)
    labels = Labels.from_table(tables["concept_labels"])
    labels.names = model_names(load_table(root, "concept_names"))
    summaries = _summary_table(root)
    crop = encoder_crop_fraction(cfg.layout, cfg.encoder)  # what the encoder saw
    writer = ImageWriter(cfg.layout, out_dir, opts.thumb_px, crop, write_root=staging)

    controls = control_flags(cfg, blind_all)
    sections: list[ModelSection] = []
    missing_models: list[str] = []
    distances: dict[str, np.ndarray] = {}
    for key in cfg.models:
        stats = for_model(stats_all, key)
        if stats is None or stats.is_empty():
            missing_models.append(key)
            continue
        flagged = verification_view.with_status(for_model(blind_all, key), root, key)
        context = _SectionInputs(cfg, tables, labels, writer, opts, for_model(summaries, key))
        section = _model_section(key, stats, flagged, context, controls)
        sections.append(section)
        dp = for_model(tables["datapoint_deltas"], key)
        dist_col = section.datapoint_columns.get("distance")
        if dp is not None and dist_col:
            distances[key] = numeric(dp, dist_col)
    all_cards = [c for s in sections for cs in s.cards.values() for c in cs]
    n_blind = sum(s.n_flagged for s in sections)
    _fill_heat_maps(cfg, all_cards, writer, progress)
    cross = _cross_figures(root, stats_all, list(cfg.models), distances)
    lineage: Lineage = read_lineage_block(cfg, tables)
    extra = _analysis_sections(cfg, root, tables, labels)
    shown = {*REQUIRED_TABLES, *OPTIONAL_TABLES, *ANALYSIS_TABLES}
    page = render_page(
        title=f"Conceptual blindspots — {cfg.name}",
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cfg=cfg,
        sections=sections,
        missing_models=missing_models,
        controls=controls,
        missing_tables=[n for n in REQUIRED_TABLES if tables[n] is None],
        optional_present=[n for n in OPTIONAL_TABLES if tables[n] is not None],
        cross=cross,
        lineage=lineage,
        other_tables=_other_tables(root, shown),
        analyses=extra,
        labels_present=bool(labels.terms),
        px=opts.thumb_px,
    )
    path = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    _swap_in(out_dir, staging, tmp, path)
    n_images = sum(1 for p in (out_dir / "img").rglob("*.jpg")) if (out_dir / "img").exists() else 0
    return ReportSummary(
        path,
        len(sections),
        n_blind,
        n_images,
        len(all_cards),
        time.perf_counter() - t0,
        _preview(sections, out_dir),
    )

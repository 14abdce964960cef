"""Render the results tables and images into ``report/index.html`` (one page, opens offline).

The page shows, per generative model: the δ histogram, real-vs-generated energy per concept and
concept frequency against relative difference (blindspots highlighted); the top suppressed and
exaggerated concepts with their names, δ, ΔE with its interval and q-value, each with a gallery
of top-activating images beside their partners from the same captions, the concept's token
activation drawn over each; the most different datapoint pairs; memorisation candidates. Across
models: a summary, the correlation matrix of relative differences, the datapoint-distance
distributions. Last, the lineage of everything on the page.

Optional tables (labels, datapoint deltas, memorisation, correlations) are shown when present;
every table is read in the columns its schema names (``store/schema.py``, ``data.load_table``).
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
    conform,
    for_model,
    load_table,
    numeric,
    read_lineage_block,
)
from blindspot_assets.report.images import ImageWriter, concept_maps
from blindspot_assets.report.names import model_names
from blindspot_assets.report.page import render_page
from blindspot_assets.stats.significance import expected_false_flags
from blindspot_assets.store.layout import REAL, TokenLayout
from blindspot_assets.store.rowstore import RowStore, store_exists
from blindspot_assets.store.tables import list_tables, read_table

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
    delta = numeric(stats, "delta")
    figs.append(
        svg.histogram_svg(
            delta,
            title=f"δ of every concept — {key}",
            xlabel="δ = sigmoid(ΔE / T)",
            value_range=(0.0, 1.0),
            markers=_sigmoid_markers(cfg),
        )
    )
    flagged_rows = list(flagged.iter_rows(named=True))

    def points(x_col: str, y_col: str) -> list[svg.ScatterPoint]:
        """The flagged concepts, coloured by kind, outlined when significant."""
        return [
            svg.ScatterPoint(
                _num(r.get(x_col)),
                _num(r.get(y_col)),
                svg.SUPPRESSED if r.get("kind") == "suppressed" else svg.EXAGGERATED,
                _concept_tooltip(r, labels.name(int(r["concept"]))),
                bool(r["significant"]),
            )
            for r in flagged_rows
        ]

    def scatter(x_col: str, y_col: str, **kwargs: Any) -> str:
        x, y = numeric(stats, x_col), numeric(stats, y_col)
        return svg.scatter_svg(x, y, highlight=points(x_col, y_col), **kwargs)

    legend = {"suppressed": svg.SUPPRESSED, "exaggerated": svg.EXAGGERATED, "other": svg.NEUTRAL}
    title = f"Energy per concept, real vs generated — {key}"
    figs.append(
        scatter("energy_real", "energy_gen", title=title, xlabel="E(real)", ylabel=f"E({key})",
                log_x=True, log_y=True, diagonal=True, legend=legend)
    )  # fmt: skip
    title = f"Concept frequency vs relative difference — {key}"
    xlabel = "fraction of real images where it fires"
    figs.append(
        scatter("image_freq_real", "relative", title=title, xlabel=xlabel,
                ylabel="relative difference", log_x=True)
    )  # fmt: skip
    return figs


_STAT_KEYS = (
    ("delta", ("delta",)),
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
    """A flagged row's numbers for its card; those the row has no value for are left out."""
    out: dict[str, Any] = {}
    for key, cols in _STAT_KEYS:
        values = tuple(row[c] for c in cols)
        if any(v is not None for v in values):
            out[key] = values if len(cols) > 1 else values[0]
    return out


def _top_rows(flagged: pl.DataFrame, kind: str, n: int) -> pl.DataFrame:
    return flagged.filter(pl.col("kind") == kind).sort("rank").head(n)


def _top_images(top: pl.DataFrame | None, concept: int, dataset: str, n: int) -> list[str]:
    if top is None:
        return []
    rows = top.filter((pl.col("concept") == concept) & (pl.col("dataset") == dataset))
    return [str(i) for i in rows.sort("rank")["image_id"].head(n).to_list()]


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
        "rank", "concept", "name", "kind", "delta", "delta_energy", "delta_energy_ci_low",
        "delta_energy_ci_high", "relative", "change_lcb", "effect_size", "q_value",
        "paper_verdict", "significant", "specific", "within_nuisance", "verification_status",
    ]  # fmt: skip
    df = flagged.sort("rank").head(opts.max_table_rows)
    named = bool(labels.terms or labels.names)
    # the columns with a value (a partition written before a column existed has none)
    cols = [c for c in preferred if (c == "name" and named) or (c != "name" and _any(df[c]))]
    rows = []
    for r in df.iter_rows(named=True):
        concept = int(r["concept"])
        row = {c: r.get(c) for c in cols}
        row["name"] = labels.name(concept)
        row["_anchor"] = f"m-{key}-c{concept}" if concept in carded else ""
        rows.append(row)
    return cols, rows


def _any(column: pl.Series) -> bool:
    return column.null_count() < column.len()


def _specific_view(
    flagged: pl.DataFrame, labels: Labels, opts: ReportOptions
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """The significant flags split into model-specific and shared (``stats/specific.py``)."""
    if not _any(flagged["specific"]):
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
) -> list[dict[str, Any]]:
    """The model's most different real/generated pairs (``datapoint_deltas``, by ``l2``)."""
    df = for_model(df, key)
    if df is None:
        return []
    out = []
    for r in (
        df.sort("l2", descending=True, nulls_last=True)
        .head(opts.n_datapoints)
        .iter_rows(named=True)
    ):
        image_id = str(r["image_id"])
        caption = writer.caption(REAL, image_id) or writer.caption(key, image_id)
        real = Tile(REAL, image_id, None, caption, writer.thumbnail(REAL, image_id))
        gen_id = str(r["gen_image_id"] or image_id)  # a sample ≥ 1 has its own id
        gen = Tile(key, gen_id, None, caption, writer.thumbnail(key, gen_id))

        def named(concepts: list[int] | None) -> list[tuple[int, str]]:
            return [(c, labels.short(c)) for c in (concepts or [])[:8]]

        out.append(
            {
                "real": real,
                "gen": gen,
                "distance": r["l2"],
                "missing": named(r["missing_concepts"]),
                "added": named(r["added_concepts"]),
            }
        )
    return out


def _memorization(
    key: str, df: pl.DataFrame | None, writer: ImageWriter, opts: ReportOptions
) -> tuple[list[dict[str, Any]], int]:
    """The model's lowest-distance memorisation pairs (every pair may be tabled: candidates
    marked) and its number of candidates."""
    df = for_model(df, key)
    if df is None:
        return [], 0
    n_candidates = int(df["is_candidate"].fill_null(False).sum())
    out = []
    for r in df.sort("distance", nulls_last=True).head(opts.n_memorization).iter_rows(named=True):
        gen_id, real_id = str(r["gen_image_id"]), r["nearest_real_id"]
        out.append(
            {
                "gen": Tile(key, gen_id, None, writer.caption(key, gen_id),
                            writer.thumbnail(key, gen_id)),
                "real": Tile(REAL, real_id, None, writer.caption(REAL, real_id),
                             writer.thumbnail(REAL, real_id)) if real_id else None,
                "distance": r["distance"],
                "threshold": r["threshold"],
                "own_pair": r["is_own_pair"],
                "candidate": bool(r["is_candidate"]),
                "evidence": r["evidence"] or "",
                "concept_distance": r["concept_distance"],
                # "reproduced on s of k seeds" when the model made several images per caption
                "seeds": (r["reproduced_seeds"], r["n_seeds"])
                if (r["n_seeds"] or 0) > 1 else None,
                "across_seeds": bool(r["reproduced_across_seeds"]),
            }
        )  # fmt: skip
    return out, n_candidates


def _correlations(tables_root: str | Path) -> tuple[list[str], np.ndarray] | None:
    """(models, matrix) of the Pearson r of relative differences (``model_correlations``)."""
    df = load_table(tables_root, "model_correlations")
    if df is None or df.is_empty():
        return None
    names = sorted(set(df["model_a"].to_list()) | set(df["model_b"].to_list()))
    m = np.eye(len(names))
    for a, b, v in df.select("model_a", "model_b", "pearson_r").iter_rows():
        i, j = names.index(a), names.index(b)
        m[i, j] = m[j, i] = np.nan if v is None else float(v)
    return names, m


def _frequency_figure(tables_root: str | Path) -> tuple[str, str] | None:
    """Mean relative difference per concept-frequency bin, one line per model (if tabled)."""
    df = load_table(tables_root, "frequency_vs_relative")
    if df is None or df.is_empty():
        return None
    series = {}
    for key in df["model_key"].unique(maintain_order=True).to_list():
        part = df.filter(pl.col("model_key") == key)
        low, high = numeric(part, "freq_low"), numeric(part, "freq_high")
        mid = np.sqrt(np.maximum(low, 1e-12) * np.maximum(high, 1e-12))
        series[str(key)] = (mid, numeric(part, "mean_relative"))
    figure = svg.lines_svg(
        series,
        title="Relative difference by concept frequency",
        xlabel="fraction of real images where the concept fires (bin)",
        ylabel="mean relative",
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
        if flagged is not None:
            row["paper"] = int(flagged["paper_verdict"].sum())
            row["significant"] = int(flagged["significant"].sum())
        rows.append(row)
    return rows


def _model_counts(
    cfg: RunConfig,
    stats: pl.DataFrame,
    flagged: pl.DataFrame,
    summary: dict[str, Any] | None,
    controls: list[dict[str, Any]],
) -> dict[str, Any]:
    """A model's overview row; ``summary``: its ``model_summaries`` row (None before it)."""
    counts: dict[str, Any] = {"concepts": stats.height}
    for verdict, name in (("paper_verdict", "paper"), ("significant", "significant")):
        for kind in ("suppressed", "exaggerated"):
            n = flagged.filter((pl.col("kind") == kind) & pl.col(verdict)).height
            counts[f"{kind} ({name})"] = n
    counts["δ skewness"] = summary["delta_skewness"] if summary else None
    if summary:
        counts["freq–relative ρ"] = summary["freq_relative_spearman"]
    delta = numeric(stats, "delta")
    counts["median δ"] = float(np.nanmedian(delta)) if np.isfinite(delta).any() else None
    if stats.height:
        counts["pairs"] = int(stats["n_pairs"][0])
    n_sig = int(stats["significant"].sum())
    counts["expected false flags"] = expected_false_flags(n_sig, cfg.stats.params.alpha)
    done = [c for c in controls if c["significant"] is not None]
    counts["control floor"] = max(max(c["significant"], c["paper"]) for c in done) if done else None
    # does the concept vocabulary cover this model's images as well as the real ones?
    if summary and summary["recon_r2_gen"] is not None:
        r2 = f"{summary['recon_r2_real']:.2f} / {summary['recon_r2_gen']:.2f}"
        counts["SAE R² real / gen"] = r2
        counts["vocabulary gap"] = "yes" if summary["vocabulary_gap"] else "no"
    return counts | distribution_counts(summary)


# model_summaries' distribution metrics (stats/distribution.py) and their overview headers
DISTRIBUTION_COUNTS = (
    ("fd_dinov2", "FD (CLS)"), ("precision", "precision"), ("recall", "recall"),
    ("density", "density"), ("coverage", "coverage"),
)  # fmt: skip


def distribution_counts(summary: dict[str, Any] | None) -> dict[str, Any]:
    """A model's distribution metrics from its ``model_summaries`` row, each as "value [low,
    high]" (the bootstrap interval), and the sample sizes; {} before they are computed."""
    if summary is None or summary["fd_dinov2"] is None:
        return {}
    out: dict[str, Any] = {}
    for column, header in DISTRIBUTION_COUNTS:
        low, high = summary[f"{column}_ci_low"], summary[f"{column}_ci_high"]
        interval = f" [{svg.fmt(low)}, {svg.fmt(high)}]" if low is not None else ""
        out[header] = f"{svg.fmt(summary[column])}{interval}"
    out["images real / gen (distribution)"] = f"{summary['n_real']} / {summary['n_generated']}"
    return out


def _summary_rows(tables_root: str | Path) -> dict[str, dict[str, Any]]:
    """Each model's ``model_summaries`` row (δ skewness and the other per-model summaries)."""
    df = load_table(tables_root, "model_summaries")
    return {} if df is None else {str(r["model"]): r for r in df.iter_rows(named=True)}


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
        df = read_table(tables_root, name)  # every column: a glance at the table
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
    summaries: dict[str, dict[str, Any]]


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
    flagged = flagged if flagged is not None else conform(stats[:0], "blindspots")
    top = tables["concept_top_images"]
    section = ModelSection(key)
    summary = inputs.summaries.get(key)
    section.counts = _model_counts(cfg, stats, flagged, summary, controls)
    section.figures = _figures(cfg, key, stats, flagged, labels)
    section.cards = _cards(key, flagged, top, labels, writer, opts)
    carded = {c.concept for cs in section.cards.values() for c in cs}
    section.flagged_columns, section.flagged_rows = _flagged_table(
        key, flagged, labels, carded, opts
    )
    section.n_flagged = flagged.height
    section.specific, section.shared = _specific_view(flagged, labels, opts)
    section.datapoints = _datapoints(key, tables["datapoint_deltas"], labels, writer, opts)
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
    corr = _correlations(root)
    if corr is not None:
        names, matrix = corr
        cross.append(
            (
                svg.matrix_svg(names, matrix, title="Pearson r of relative differences"),
                "Correlation of per-concept relative differences between models (table "
                "model_correlations).",
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
    summaries = _summary_rows(root)
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
        context = _SectionInputs(cfg, tables, labels, writer, opts, summaries)
        section = _model_section(key, stats, flagged, context, controls)
        sections.append(section)
        dp = for_model(tables["datapoint_deltas"], key)
        if dp is not None and dp.height:
            distances[key] = numeric(dp, "l2")
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

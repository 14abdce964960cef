"""The report's views of the paper's analyses: the token-frequency figure (nb_fire against
sigmoid(relative / 0.4) with 5–95% bands), the interactive concept map coloured by δ, and the
model-against-variant comparison (e.g. SD 1.5 vs SD 1.5 + DPO).

Each function returns markup (escaped here) or None when its table is missing; the page inserts
it as is. The map's script is inline and tiny: it recolours the points and their tooltips when
another model is chosen, so the page still opens offline as one file.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from blindspot_assets.report import svg
from blindspot_assets.report.data import Labels, for_model, numeric
from blindspot_assets.report.page import resource

FREQUENCY_SCALE = 0.4  # the paper's figure: sigmoid(relative / 0.4)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def frequency_bands(
    nb_fire: np.ndarray, relative: np.ndarray, n_bins: int = 12, min_per_bin: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concepts binned by log nb_fire (those that fire): per bin the median nb_fire and the 5%,
    50% and 95% quantiles of sigmoid(relative / 0.4). Bins with fewer than ``min_per_bin``
    concepts are dropped (their quantiles are noise)."""
    x = np.asarray(nb_fire, dtype=np.float64)
    rel = np.asarray(relative, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(rel) & (x > 0)
    x, y = x[ok], 1.0 / (1.0 + np.exp(-rel[ok] / FREQUENCY_SCALE))
    empty = np.zeros(0)
    if x.size == 0:
        return empty, empty, empty, empty
    lx = np.log10(x)
    edges = np.linspace(lx.min(), lx.max() + 1e-9, n_bins + 1)
    which = np.clip(np.digitize(lx, edges) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        if sel.sum() >= min_per_bin:
            q = np.quantile(y[sel], [0.05, 0.5, 0.95])
            rows.append((float(np.median(x[sel])), *map(float, q)))
    if not rows:
        return empty, empty, empty, empty
    arr = np.asarray(rows)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def token_frequency_figure(
    stats_all: pl.DataFrame | None, models: Sequence[str]
) -> tuple[str, str] | None:
    """The paper's frequency figure, one band per model, from concept_stats."""
    series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for key in models:
        stats = for_model(stats_all, key)
        if stats is None:
            continue
        bands = frequency_bands(numeric(stats, "nb_fire_real"), numeric(stats, "relative"))
        if bands[0].size:
            series[key] = (bands[0], bands[1], bands[2], bands[3])
    if not series:
        return None
    figure = svg.bands_svg(
        series,
        title="Token fire count vs sigmoid(relative / 0.4)",
        xlabel="token codes firing in the real set (nb_fire, bin median)",
        ylabel="sigmoid(relative / 0.4)",
        log_x=True,
        y_range=(0.0, 1.0),
        hline=0.5,
    )
    return figure, (
        "As the paper's figure: concepts binned by how many real tokens they fire on; line: "
        "median of sigmoid(relative difference / 0.4), band: 5–95% of the concepts in the bin "
        "(bins of ≥ 5 concepts). Below 0.5: suppressed, above: exaggerated."
    )


def _pick_points(
    concepts: np.ndarray, priority: dict[int, float], flagged: set[int], max_points: int
) -> np.ndarray:
    """Every concept when they fit; else the flagged ones, then by ``priority`` (real energy)."""
    if concepts.size <= max_points:
        return concepts
    score = np.array([priority.get(int(c), 0.0) for c in concepts])
    score = score + np.array([np.inf if int(c) in flagged else 0.0 for c in concepts])
    keep = np.argsort(-score, kind="stable")[:max_points]
    return np.sort(concepts[keep])


def concept_map_html(
    map_df: pl.DataFrame | None,
    stats_all: pl.DataFrame | None,
    flagged_all: pl.DataFrame | None,
    models: Sequence[str],
    labels: Labels,
    max_points: int = 4000,
) -> str | None:
    """The concept map (table concept_map) with a model chooser; None without the table."""
    if map_df is None or map_df.is_empty():
        return None
    map_df = map_df.unique("concept", keep="first").sort("concept")
    deltas: dict[str, dict[int, float]] = {}
    flagged: set[int] = set()
    priority: dict[int, float] = {}
    for key in models:
        stats = for_model(stats_all, key)
        if stats is None or stats.is_empty():
            continue
        deltas[key] = dict(
            zip(stats["concept"].to_list(), numeric(stats, "delta").tolist(), strict=True)
        )
        if not priority:
            energy = numeric(stats, "energy_real").tolist()
            priority = dict(zip(stats["concept"].to_list(), energy, strict=True))
        marked = for_model(flagged_all, key)
        if marked is not None:
            flagged |= {int(c) for c in marked["concept"].to_list()}
    all_concepts = map_df["concept"].to_numpy()
    shown = _pick_points(all_concepts, priority, flagged, max_points)
    rows = map_df.filter(pl.col("concept").is_in(shown.tolist()))
    concepts = [int(c) for c in rows["concept"].to_list()]
    names = [labels.name(c) for c in concepts]
    per_model = {
        key: [_round(d.get(c)) for c in concepts] for key, d in deltas.items()
    }  # fmt: skip
    first = next(iter(per_model), None)
    first_d = per_model[first] if first else [None] * len(concepts)
    colours = [svg.delta_colour(v if v is not None else float("nan")) for v in first_d]
    tooltips = [_tooltip(c, n, first, v) for c, n, v in zip(concepts, names, first_d, strict=True)]
    method = str(rows["method"][0]) if rows.height else "2-D map"
    figure = svg.concept_map_svg(
        numeric(rows, "x"),
        numeric(rows, "y"),
        colours,
        tooltips,
        title="Concept map coloured by δ",
        svg_id="concept-map",
    )
    options = "".join(f'<option value="{_esc(k)}">{_esc(k)}</option>' for k in per_model)
    data = json.dumps({"concepts": concepts, "names": names, "delta": per_model})
    data = data.replace("</", "<\\/")
    subset = (
        f"{len(concepts)} of {all_concepts.size} concepts shown (every flagged one, then by real "
        "energy). "
        if len(concepts) < all_concepts.size
        else ""
    )
    return (
        '<div class="fig concept-map-fig">'
        + (
            f'<label>colour by δ of <select id="concept-map-model">{options}</select></label>'
            if per_model
            else '<p class="note">No concept_stats yet: the map is uncoloured.</p>'
        )
        + f"<div>{figure}</div>"
        + f'<div class="cap">{_esc(subset)}Each point is a concept of the SAE, placed by '
        f"{_esc(method)} of its dictionary direction (cosine): neighbours point the same way. "
        "Colour: δ of the chosen model, blue = suppressed (δ → 0), white = unchanged (0.5), "
        "red = exaggerated (δ → 1); grey: no statistics. Hover a point for its concept.</div>"
        f'<script type="application/json" id="concept-map-data">{data}</script>'
        f"<script>{_MAP_JS}</script></div>"
    )


def _round(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _tooltip(concept: int, name: str, model: str | None, delta: float | None) -> str:
    label = f" ({name})" if name else ""
    value = svg.fmt(delta) if delta is not None else "–"
    return f"concept {concept}{label}: δ({model}) = {value}" if model else f"concept {concept}"


# The map's script (package file; mirrors svg.delta_colour: blue – white – red over δ in [0, 1]).
_MAP_JS = resource("static/concept_map.js").rstrip("\n")


def variant_html(variants: pl.DataFrame | None, deltas_all: pl.DataFrame | None) -> str | None:
    """Each model against its variant (table variant_comparisons): the verdict in words, the
    numbers with their interval, and the per-caption distance distributions of both."""
    if variants is None or variants.is_empty():
        return None
    parts: list[str] = []
    for row in variants.iter_rows(named=True):
        a, b = str(row["model_a"]), str(row["model_b"])
        parts.append(f'<div class="variant"><h3>{_esc(a)} vs {_esc(b)}</h3>')
        parts.append(f"<p>{_esc(_verdict(row))}</p>")
        parts.append(_variant_table(row))
        dists = {}
        for key in (a, b):
            df = for_model(deltas_all, key)
            if df is not None and df.height:
                dists[key] = numeric(df, "l2")
        if len(dists) == 2:
            fig = svg.step_histograms_svg(
                dists, title=f"‖ξ(x′) − ξ(x)‖ — {a} vs {b}", xlabel="‖ξ(x′) − ξ(x)‖"
            )
            parts.append(
                f'<div class="figs"><div class="fig">{fig}<div class="cap">Per caption: the '
                "distance in concept space between the real image and the image each model "
                "generated from its caption (table datapoint_deltas).</div></div></div>"
            )
        parts.append("</div>")
    return "".join(parts)


def _verdict(row: dict[str, Any]) -> str:
    a, b = row["model_a"], row["model_b"]
    diff, lo, hi = row["mean_diff"], row["ci_low"], row["ci_high"]
    frac = row["frac_b_closer"]
    where = ""
    if isinstance(lo, float) and isinstance(hi, float) and np.isfinite(lo) and np.isfinite(hi):
        if hi < 0:
            where = f"{b} stays closer to the real images than {a} (the interval excludes 0). "
        elif lo > 0:
            where = f"{b} moves further from the real images than {a} (the interval excludes 0). "
        else:
            where = f"No clear difference between {a} and {b} (the interval contains 0). "
    share = f"{b} is closer on {100 * frac:.0f}% of captions. " if isinstance(frac, float) else ""
    ci = f" (95% interval {svg.fmt(lo)} to {svg.fmt(hi)})" if lo is not None else ""
    return f"{where}{share}Mean ‖ξ(x′) − ξ(x)‖ difference {b} − {a}: {svg.fmt(diff)}{ci}."


_VARIANT_COLUMNS = (
    ("n", "captions"),
    ("l2_mean_a", "mean ‖Δξ‖ a"),
    ("l2_mean_b", "mean ‖Δξ‖ b"),
    ("l2_median_a", "median a"),
    ("l2_median_b", "median b"),
    ("mean_diff", "b − a"),
    ("ci_low", "CI low"),
    ("ci_high", "CI high"),
    ("effect_size", "d_z"),
    ("p_value", "p"),
    ("frac_b_closer", "b closer"),
)


def _variant_table(row: dict[str, Any]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for _, h in _VARIANT_COLUMNS)
    cells = "".join(f"<td>{_esc(svg.fmt(row[c]))}</td>" for c, _ in _VARIANT_COLUMNS)
    return (
        f'<table class="data variant-table"><thead><tr>{head}</tr></thead>'
        f"<tbody><tr>{cells}</tr></tbody></table>"
    )

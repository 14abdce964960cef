"""The report's "changes" sections: one per comparison of ``stats.compare`` (table
``blindspot_changes``), the status counts, whether the gate passes, and the changed concepts
with the paired change of ΔE and its interval. Markup escaped here; the page inserts it."""

from __future__ import annotations

import html
from collections.abc import Sequence

import polars as pl

from blindspot_assets.report.data import Labels
from blindspot_assets.report.svg import fmt
from blindspot_assets.stats.changes import regressions, status_counts

TABLE = "blindspot_changes"
MAX_ROWS = 60
_ORDER = ("new", "worsened", "resolved", "improved", "borderline", "persisting")
_COLUMNS = (
    ("concept", "concept"), ("name", "name"), ("status", "status"), ("kind", "kind"),
    ("base_delta_energy", "ΔE base"), ("candidate_delta_energy", "ΔE candidate"),
    ("change", "change"), ("change_ci_low", "CI low"), ("change_ci_high", "CI high"),
    ("change_effect_size", "d_z"), ("change_q_value", "q"),
)  # fmt: skip


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def changes_sections(
    changes: pl.DataFrame | None, labels: Labels, fail_on: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(id, title, markup) per comparison; none without the table."""
    if changes is None or changes.is_empty():
        return []
    out = []
    for key in sorted(changes["comparison"].unique().to_list()):
        rows = changes.filter(pl.col("comparison") == key)
        out.append(
            (
                f"changes-{key}",
                f"Changes {key.replace('..', ' → ')}",
                _section(rows, labels, fail_on),
            )
        )
    return out


def _section(rows: pl.DataFrame, labels: Labels, fail_on: Sequence[str]) -> str:
    first = rows.row(0, named=True)
    bad = regressions(rows, fail_on)
    counts = status_counts(rows)
    verdict = (
        f'<div class="warn changes-fail">Gate fails: {bad.height} regression(s) matching '
        f"<code>{_esc(','.join(fail_on))}</code>.</div>"
        if bad.height
        else f'<p class="ok changes-pass">Gate passes: no concept matches '
        f"<code>{_esc(','.join(fail_on) or '(nothing)')}</code>.</p>"
    )
    count_cells = "".join(f"<td>{counts.get(s, 0)}</td>" for s in (*_ORDER, "unchanged"))
    count_head = "".join(f"<th>{s}</th>" for s in (*_ORDER, "unchanged"))
    parts = [
        verdict,
        f'<p class="note">{_esc(first["base"])} ({_esc(first["base_model_version"])}) → '
        f"{_esc(first['candidate'])} ({_esc(first['candidate_model_version'])}), "
        f"{first['n_pairs']} captions answered by both. Change: the paired mean over captions "
        "of ξ(candidate image) − ξ(base image), i.e. ΔE(candidate) − ΔE(base), with its 95% "
        "interval; q: the minimum-effect test of the change, Benjamini–Hochberg over concepts. "
        "new / worsened need a significant change away from the real level; a verdict that "
        "flips without one is borderline.</p>",
        f'<table class="data"><thead><tr>{count_head}</tr></thead><tbody><tr>{count_cells}'
        "</tr></tbody></table>",
    ]
    changed = rows.filter(pl.col("status") != "unchanged").with_columns(
        order=pl.col("status").replace_strict(
            {s: i for i, s in enumerate(_ORDER)}, default=len(_ORDER)
        )
    )
    changed = changed.sort(["order", "change_q_value"])
    if changed.is_empty():
        parts.append('<p class="note">No concept is a blindspot on either side.</p>')
        return "".join(parts)
    text = ("name", "status", "kind")
    head = "".join(f"<th{' class=t' if c in text else ''}>{_esc(h)}</th>" for c, h in _COLUMNS)
    body = []
    for r in changed.head(MAX_ROWS).iter_rows(named=True):
        r["name"] = labels.short(int(r["concept"]))
        cells = []
        for c, _ in _COLUMNS:
            v = r[c]
            if c in text:
                cells.append(f'<td class="t">{_esc(v or "")}</td>')
            else:
                data = f' data-v="{v}"' if isinstance(v, int | float) else ""
                cells.append(f"<td{data}>{_esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = changed.height - min(changed.height, MAX_ROWS)
    parts.append(
        f'<table class="data sortable changes-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    if more:
        parts.append(f'<p class="note">… {more} more changed concepts (table {TABLE}).</p>')
    return "".join(parts)

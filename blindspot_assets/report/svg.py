"""Inline SVG figures for the report, drawn from numbers alone (no plotting library).

Every function returns one ``<svg>`` element as a string. Text is escaped here; the page inserts
the string as markup. Figures keep their size bounded whatever the number of concepts: a scatter
of tens of thousands of concepts draws the unflagged ones as a density grid and only the
highlighted ones as points (with a tooltip each).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

# Colours shared with the page's CSS (suppressed = blue, exaggerated = orange).
SUPPRESSED = "#2b6cb0"
EXAGGERATED = "#dd6b20"
NEUTRAL = "#a0aec0"
SERIES = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#4a5568")


def fmt(value: object, digits: int = 3) -> str:
    """A number for people: 3 significant digits, '–' for missing or NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x != 0 and (abs(x) >= 10**5 or abs(x) < 10**-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _tick_label(x: str, y: str, anchor: str, label: str) -> str:
    return f'<text x="{x}" y="{y}" class="tl" text-anchor="{anchor}">{_esc(label)}</text>'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


@dataclass(frozen=True)
class Frame:
    """Plot area inside an SVG canvas, mapping data coordinates to pixels."""

    width: int
    height: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    left: int = 52
    right: int = 12
    top: int = 14
    bottom: int = 40

    def px(self, x: F64) -> F64:
        span = (self.x_hi - self.x_lo) or 1.0
        w = self.width - self.left - self.right
        return np.asarray(self.left + (x - self.x_lo) / span * w, dtype=np.float64)

    def py(self, y: F64) -> F64:
        span = (self.y_hi - self.y_lo) or 1.0
        h = self.height - self.top - self.bottom
        return np.asarray(self.height - self.bottom - (y - self.y_lo) / span * h, dtype=np.float64)

    def axes(
        self,
        xlabel: str,
        ylabel: str,
        x_ticks: Sequence[float] | None = None,
        y_ticks: Sequence[float] | None = None,
        x_tick_label: Callable[[float], str] = fmt,
        y_tick_label: Callable[[float], str] = fmt,
    ) -> list[str]:
        """Axis lines, ticks, grid lines and labels. ``*_tick_label`` formats a tick value."""
        out: list[str] = []
        x0, x1 = self.left, self.width - self.right
        y0, y1 = self.height - self.bottom, self.top
        xt = list(x_ticks) if x_ticks is not None else nice_ticks(self.x_lo, self.x_hi)
        yt = list(y_ticks) if y_ticks is not None else nice_ticks(self.y_lo, self.y_hi, 4)
        for t in xt:  # a tick and its label below the axis
            x = f"{float(self.px(np.array([t]))[0]):.1f}"
            out.append(f'<line x1="{x}" y1="{y0}" x2="{x}" y2="{y0 + 4}" class="tick"/>')
            out.append(_tick_label(x, f"{y0 + 15}", "middle", x_tick_label(t)))
        for t in yt:  # a grid line and its label left of the axis
            y = float(self.py(np.array([t]))[0])
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>')
            out.append(_tick_label(f"{x0 - 5}", f"{y + 3:.1f}", "end", y_tick_label(t)))
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>')
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>')
        out.append(
            f'<text x="{(x0 + x1) / 2:.0f}" y="{self.height - 6}" class="al" '
            f'text-anchor="middle">{_esc(xlabel)}</text>'
        )
        cy = (y0 + y1) / 2
        out.append(
            f'<text x="12" y="{cy:.0f}" class="al" text-anchor="middle" '
            f'transform="rotate(-90 12 {cy:.0f})">{_esc(ylabel)}</text>'
        )
        return out


_STYLE = (
    "<style>.axis{stroke:#4a5568;stroke-width:1}.tick{stroke:#4a5568}"
    ".grid{stroke:#edf2f7;stroke-width:1}.tl{font:10px sans-serif;fill:#4a5568}"
    ".al{font:11px sans-serif;fill:#2d3748}.ann{font:10px sans-serif}</style>"
)


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>{_STYLE}{''.join(body)}</svg>"
    )


def _legend_entry(frame: Frame, i: int, colour: str, text: str, inset: int) -> list[str]:
    """The i-th line of a legend in the top right corner of the plot area."""
    ly = frame.top + 10 + 14 * i
    lx = frame.width - frame.right - inset
    return [
        f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>',
        f'<text x="{lx + 14}" y="{ly + 1}" class="ann">{_esc(text)}</text>',
    ]


def _finite(values: ArrayLike) -> F64:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def histogram_svg(
    values: ArrayLike,
    *,
    title: str,
    xlabel: str,
    value_range: tuple[float, float] | None = None,
    bins: int = 40,
    markers: Mapping[float, str] | None = None,
    width: int = 420,
    height: int = 230,
) -> str:
    """Bar histogram of ``values`` with vertical marker lines (e.g. the δ thresholds)."""
    v = _finite(values)
    if value_range is None:
        value_range = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    lo, hi = value_range
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    frame = Frame(width, height, lo, hi, 0.0, max(1.0, float(counts.max()) * 1.08))
    body = frame.axes(f"{xlabel}   (n = {v.size})", "concepts")
    xs, ys = frame.px(edges.astype(np.float64)), frame.py(counts.astype(np.float64))
    base = frame.py(np.array([0.0]))[0]
    for i, c in enumerate(counts):
        if c == 0:
            continue
        mid = (edges[i] + edges[i + 1]) / 2
        colour = NEUTRAL
        if markers:
            below = [t for t, kind in markers.items() if kind == "suppressed" and mid < t]
            above = [t for t, kind in markers.items() if kind == "exaggerated" and mid > t]
            colour = SUPPRESSED if below else EXAGGERATED if above else NEUTRAL
        body.append(
            f'<rect x="{xs[i]:.1f}" y="{ys[i]:.1f}" width="{max(xs[i + 1] - xs[i] - 1, 0.5):.1f}"'
            f' height="{base - ys[i]:.1f}" fill="{colour}"><title>{fmt(edges[i])}–'
            f"{fmt(edges[i + 1])}: {int(c)}</title></rect>"
        )
    for t in markers or {}:
        x = frame.px(np.array([t]))[0]
        body.append(
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{base:.1f}" '
            f'stroke="#1a202c" stroke-dasharray="4 3"/>'
        )
    return _svg(width, height, body, title)


def step_histograms_svg(
    series: Mapping[str, ArrayLike],
    *,
    title: str,
    xlabel: str,
    bins: int = 30,
    width: int = 520,
    height: int = 240,
) -> str:
    """Overlaid step histograms (densities) of several series, one colour each, with a legend."""
    cleaned = {k: _finite(v) for k, v in series.items()}
    allv = np.concatenate([v for v in cleaned.values() if v.size] or [np.zeros(1)])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    dens = {
        k: np.histogram(v, bins=edges, density=True)[0] if v.size else np.zeros(bins)
        for k, v in cleaned.items()
    }
    top = max([float(d.max()) for d in dens.values()] + [1e-12]) * 1.1
    frame = Frame(width, height, lo, hi, 0.0, top)
    body = frame.axes(xlabel, "density")
    xs = frame.px(edges)
    for i, (name, d) in enumerate(dens.items()):
        ys = frame.py(d.astype(np.float64))
        base = frame.py(np.array([0.0]))[0]
        pts = [f"{xs[0]:.1f},{base:.1f}"]
        for j in range(bins):
            pts.append(f"{xs[j]:.1f},{ys[j]:.1f} {xs[j + 1]:.1f},{ys[j]:.1f}")
        pts.append(f"{xs[-1]:.1f},{base:.1f}")
        colour = SERIES[i % len(SERIES)]
        body.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.6"><title>{_esc(name)}</title></polyline>'
        )
        body += _legend_entry(frame, i, colour, f"{name} (n={cleaned[name].size})", 150)
    return _svg(width, height, body, title)


@dataclass(frozen=True)
class ScatterPoint:
    """A highlighted point: drawn on top with a colour and a tooltip."""

    x: float
    y: float
    colour: str
    tooltip: str
    emphasis: bool = False  # drawn larger with an outline (e.g. significant)


def _log10(values: F64, floor: float) -> F64:
    return np.asarray(np.log10(np.maximum(values, floor)), dtype=np.float64)


def scatter_svg(
    x: ArrayLike,
    y: ArrayLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    highlight: Sequence[ScatterPoint] = (),
    log_x: bool = False,
    log_y: bool = False,
    diagonal: bool = False,
    max_background_points: int = 3000,
    legend: Mapping[str, str] | None = None,
    width: int = 420,
    height: int = 330,
) -> str:
    """Scatter of every (x, y) in grey, the ``highlight`` points on top.

    Log axes clamp values at a floor below the smallest positive value, so zeros are drawn on
    the axis edge instead of vanishing. Beyond ``max_background_points`` the grey points become a
    density grid, keeping the SVG small for tens of thousands of concepts.
    """
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    hx = np.array([p.x for p in highlight], dtype=np.float64)
    hy = np.array([p.y for p in highlight], dtype=np.float64)
    tx, thx, ty, thy = _log_axes(xa, hx, ya, hy, log_x, log_y, shared_floor=diagonal)
    frame = _scatter_frame(tx, thx, ty, thy, diagonal, width, height)
    x_ticks = _log_ticks(frame.x_lo, frame.x_hi) if log_x else None
    y_ticks = _log_ticks(frame.y_lo, frame.y_hi) if log_y else None
    body = frame.axes(
        xlabel,
        ylabel,
        x_ticks,
        y_ticks,
        _pow10 if log_x else fmt,
        _pow10 if log_y else fmt,
    )
    if diagonal:
        d = frame.px(np.array([frame.x_lo, frame.x_hi]))
        e = frame.py(np.array([frame.y_lo, frame.y_hi]))
        body.append(
            f'<line x1="{d[0]:.1f}" y1="{e[0]:.1f}" x2="{d[1]:.1f}" y2="{e[1]:.1f}" '
            f'stroke="#718096" stroke-dasharray="4 3"/>'
        )
    keep = np.isfinite(tx) & np.isfinite(ty)
    px, py = frame.px(tx[keep]), frame.py(ty[keep])
    if px.size <= max_background_points:
        body.extend(
            f'<circle cx="{a:.1f}" cy="{b:.1f}" r="1.8" fill="{NEUTRAL}" fill-opacity="0.6"/>'
            for a, b in zip(px, py, strict=True)
        )
    else:
        body.extend(_density_cells(frame, px, py))
    body.extend(_highlight_points(highlight, frame.px(thx), frame.py(thy)))
    body.extend(_scatter_legend(frame, legend or {}))
    return _svg(width, height, body, title)


def _log_axes(
    xa: F64, hx: F64, ya: F64, hy: F64, log_x: bool, log_y: bool, shared_floor: bool
) -> tuple[F64, F64, F64, F64]:
    """The coordinates as drawn: log10 on a log axis, clamped at a floor below the smallest
    positive value (one floor for both axes when ``shared_floor``)."""

    def floor_of(*arrays: F64) -> float:
        pos = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays])
        return float(pos.min()) / 2 if pos.size else 1e-6

    fx = floor_of(xa, hx) if log_x else 0.0
    fy = floor_of(ya, hy) if log_y else 0.0
    if shared_floor and log_x and log_y:
        fx = fy = min(fx, fy)
    if log_x:
        xa, hx = _log10(xa, fx), _log10(hx, fx)
    if log_y:
        ya, hy = _log10(ya, fy), _log10(hy, fy)
    return xa, hx, ya, hy


def _scatter_frame(
    tx: F64, thx: F64, ty: F64, thy: F64, diagonal: bool, width: int, height: int
) -> Frame:
    """The frame holding every finite point, padded by 4 % (the same range on both axes for
    a diagonal)."""
    both_x = np.concatenate([tx, thx])
    both_y = np.concatenate([ty, thy])
    ok_x, ok_y = both_x[np.isfinite(both_x)], both_y[np.isfinite(both_y)]
    x_lo, x_hi = (float(ok_x.min()), float(ok_x.max())) if ok_x.size else (0.0, 1.0)
    y_lo, y_hi = (float(ok_y.min()), float(ok_y.max())) if ok_y.size else (0.0, 1.0)
    if diagonal:
        x_lo = y_lo = min(x_lo, y_lo)
        x_hi = y_hi = max(x_hi, y_hi)
    pad_x, pad_y = (x_hi - x_lo) * 0.04 or 0.5, (y_hi - y_lo) * 0.04 or 0.5
    return Frame(width, height, x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y)


def _highlight_points(highlight: Sequence[ScatterPoint], hpx: F64, hpy: F64) -> list[str]:
    out = []
    for p, a, b in zip(highlight, hpx, hpy, strict=True):
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        r, stroke = (3.6, ' stroke="#1a202c" stroke-width="0.8"') if p.emphasis else (2.6, "")
        out.append(
            f'<circle cx="{a:.1f}" cy="{b:.1f}" r="{r}" fill="{p.colour}"{stroke}>'
            f"<title>{_esc(p.tooltip)}</title></circle>"
        )
    return out


def _scatter_legend(frame: Frame, legend: Mapping[str, str]) -> list[str]:
    """The legend in the top left corner of the plot area: a dot and a name per line."""
    out = []
    for i, (name, colour) in enumerate(legend.items()):
        ly = frame.top + 10 + 14 * i
        lx = frame.left + 8
        out.append(f'<circle cx="{lx + 4}" cy="{ly - 3}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{lx + 12}" y="{ly + 1}" class="ann">{_esc(name)}</text>')
    return out


def _pow10(t: float) -> str:
    """The label of a log-axis tick at exponent ``t``: 1e-3 style for whole decades."""
    return f"1e{round(t)}" if abs(t - round(t)) < 1e-9 and abs(t) >= 3 else fmt(10**t, 2)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Exponents of the ticks of a log axis: whole decades, or 1-2-5 steps inside a decade."""
    a, b = math.ceil(lo), math.floor(hi)
    if b - a >= 1:
        step = max(1, math.ceil((b - a + 1) / 6))
        return [float(t) for t in range(a, b + 1, step)]
    ticks = [
        math.log10(m * 10.0**e)
        for e in range(math.floor(lo) - 1, math.ceil(hi) + 1)
        for m in (1, 2, 5)
        if lo <= math.log10(m * 10.0**e) <= hi
    ]
    return ticks if len(ticks) >= 2 else nice_ticks(lo, hi)


def _density_cells(frame: Frame, px: F64, py: F64, cells: int = 60) -> list[str]:
    x0, x1 = frame.left, frame.width - frame.right
    y1, y0 = frame.height - frame.bottom, frame.top
    counts, xe, ye = np.histogram2d(px, py, bins=cells, range=[[x0, x1], [y0, y1]])
    peak = float(np.log1p(counts).max()) or 1.0
    out = []
    for i, j in zip(*np.nonzero(counts), strict=True):
        alpha = 0.15 + 0.75 * float(np.log1p(counts[i, j])) / peak
        out.append(
            f'<rect x="{xe[i]:.1f}" y="{ye[j]:.1f}" width="{xe[i + 1] - xe[i]:.1f}" '
            f'height="{ye[j + 1] - ye[j]:.1f}" fill="{NEUTRAL}" fill-opacity="{alpha:.2f}">'
            f"<title>{int(counts[i, j])} concepts</title></rect>"
        )
    return out


def _diverging(v: float) -> str:
    """Blue (−1) – white (0) – red (+1)."""
    v = max(-1.0, min(1.0, v))
    if v >= 0:
        r, g, b = 255, int(255 - 175 * v), int(255 - 195 * v)
    else:
        r, g, b = int(255 + 215 * v), int(255 + 140 * v), 255
    return f"#{r:02x}{g:02x}{b:02x}"


def matrix_svg(
    labels: Sequence[str],
    matrix: ArrayLike,
    *,
    title: str,
    cell: int = 64,
    value_label: str = "r",
) -> str:
    """A square heat map with values written in each cell (diverging colours on [−1, 1])."""
    m = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    margin = 12 + 7 * max((len(s) for s in labels), default=1)
    margin = min(margin, 150)
    width = margin + n * cell + 12
    height = margin + n * cell + 12
    body = []
    for i in range(n):
        for j in range(n):
            v = float(m[i, j])
            x, y = margin + j * cell, margin + i * cell
            colour = _diverging(v) if math.isfinite(v) else "#f7fafc"
            text_colour = "#fff" if math.isfinite(v) and abs(v) > 0.6 else "#1a202c"
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{colour}">'
                f"<title>{_esc(labels[i])} × {_esc(labels[j])}: {value_label} = {fmt(v)}</title>"
                f"</rect>"
            )
            body.append(
                f'<text x="{x + cell / 2 - 1:.0f}" y="{y + cell / 2 + 4:.0f}" '
                f'text-anchor="middle" class="ann" fill="{text_colour}">{fmt(v, 2)}</text>'
            )
    for i, name in enumerate(labels):
        c = margin + i * cell + cell / 2
        body.append(
            f'<text x="{margin - 6}" y="{c + 3:.0f}" text-anchor="end" class="tl">'
            f"{_esc(name)}</text>"
        )
        body.append(
            f'<text x="{c:.0f}" y="{margin - 6}" text-anchor="start" class="tl" '
            f'transform="rotate(-40 {c:.0f} {margin - 6})">{_esc(name)}</text>'
        )
    return _svg(width, height, body, title)


def lines_svg(
    series: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    zero_line: bool = True,
    width: int = 520,
    height: int = 260,
) -> str:
    """One line with markers per series (``name → (x, y)``), with a legend."""
    clean: dict[str, tuple[F64, F64]] = {}
    for name, (x, y) in series.items():
        xa = np.asarray(x, dtype=np.float64).reshape(-1)
        ya = np.asarray(y, dtype=np.float64).reshape(-1)
        ok = np.isfinite(xa) & np.isfinite(ya) & ((xa > 0) if log_x else True)
        xa, ya = xa[ok], ya[ok]
        order = np.argsort(xa)
        clean[name] = (np.log10(xa[order]) if log_x else xa[order], ya[order])
    xs = np.concatenate([x for x, _ in clean.values()] or [np.zeros(1)])
    ys = np.concatenate([y for _, y in clean.values()] or [np.zeros(1)])
    if zero_line:
        ys = np.append(ys, 0.0)
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    y_lo, y_hi = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
    pad_x, pad_y = (x_hi - x_lo) * 0.05 or 0.5, (y_hi - y_lo) * 0.08 or 0.5
    frame = Frame(width, height, x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y)
    x_ticks = _log_ticks(frame.x_lo, frame.x_hi) if log_x else None
    body = frame.axes(xlabel, ylabel, x_ticks, None, _pow10 if log_x else fmt, fmt)
    if zero_line:
        z = frame.py(np.array([0.0]))[0]
        body.append(
            f'<line x1="{frame.left}" y1="{z:.1f}" x2="{width - frame.right}" y2="{z:.1f}" '
            f'stroke="#718096" stroke-dasharray="4 3"/>'
        )
    for i, (name, (x, y)) in enumerate(clean.items()):
        colour = SERIES[i % len(SERIES)]
        px, py = frame.px(x), frame.py(y)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        for a, b, xv, yv in zip(px, py, x, y, strict=True):
            xl = fmt(10**xv) if log_x else fmt(xv)
            body.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{colour}">'
                f"<title>{_esc(name)}: {xl} → {fmt(yv)}</title></circle>"
            )
        body += _legend_entry(frame, i, colour, name, 120)
    return _svg(width, height, body, title)


def bands_svg(
    series: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    y_range: tuple[float, float] | None = None,
    hline: float | None = None,
    width: int = 520,
    height: int = 280,
) -> str:
    """A median line inside a shaded band per series (``name → (x, low, mid, high)``)."""
    clean: dict[str, tuple[F64, F64, F64, F64]] = {}
    for name, arrays in series.items():
        x, lo, mid, hi = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)
        ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(mid) & np.isfinite(hi)
        if log_x:
            ok &= x > 0
        order = np.argsort(x[ok])
        xs = np.log10(x[ok][order]) if log_x else x[ok][order]
        clean[name] = (xs, lo[ok][order], mid[ok][order], hi[ok][order])
    xs_all = np.concatenate([c[0] for c in clean.values()] or [np.zeros(1)])
    ys_all = np.concatenate([np.r_[c[1], c[3]] for c in clean.values()] or [np.zeros(1)])
    x_lo, x_hi = (float(xs_all.min()), float(xs_all.max())) if xs_all.size else (0.0, 1.0)
    if y_range is None:
        y_range = (float(ys_all.min()), float(ys_all.max())) if ys_all.size else (0.0, 1.0)
    pad_x = (x_hi - x_lo) * 0.04 or 0.5
    frame = Frame(width, height, x_lo - pad_x, x_hi + pad_x, *y_range)
    x_ticks = _log_ticks(frame.x_lo, frame.x_hi) if log_x else None
    body = frame.axes(xlabel, ylabel, x_ticks, None, _pow10 if log_x else fmt, fmt)
    if hline is not None:
        z = frame.py(np.array([hline]))[0]
        body.append(
            f'<line x1="{frame.left}" y1="{z:.1f}" x2="{width - frame.right}" y2="{z:.1f}" '
            f'stroke="#718096" stroke-dasharray="4 3"/>'
        )
    for i, (name, (x, lo, mid, hi)) in enumerate(clean.items()):
        colour = SERIES[i % len(SERIES)]
        px = frame.px(x)
        if px.size:
            upper = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, frame.py(hi), strict=True))
            lower = " ".join(
                f"{a:.1f},{b:.1f}" for a, b in zip(px[::-1], frame.py(lo)[::-1], strict=True)
            )
            body.append(
                f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.16" '
                f'stroke="none"><title>{_esc(name)}: 5–95% band</title></polygon>'
            )
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, frame.py(mid), strict=True))
            body.append(
                f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
            )
        for a, b, xv, lv, mv, hv in zip(px, frame.py(mid), x, lo, mid, hi, strict=True):
            xl = fmt(10**xv) if log_x else fmt(xv)
            body.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.4" fill="{colour}">'
                f"<title>{_esc(name)}: {xl} → median {fmt(mv)} (5–95%: {fmt(lv)}–{fmt(hv)})"
                f"</title></circle>"
            )
        body += _legend_entry(frame, i, colour, name, 120)
    return _svg(width, height, body, title)


def delta_colour(delta: float) -> str:
    """δ on the concept map: blue (0, suppressed) – white (0.5) – red (1, exaggerated); grey
    when missing. The page's script recolours with the same formula."""
    if not math.isfinite(delta):
        return NEUTRAL
    return _diverging(2.0 * delta - 1.0)


def concept_map_svg(
    x: ArrayLike,
    y: ArrayLike,
    colours: Sequence[str],
    tooltips: Sequence[str],
    *,
    title: str,
    svg_id: str,
    width: int = 640,
    height: int = 520,
) -> str:
    """Concepts as points at their 2-D map position (no axes: the coordinates mean nothing in
    themselves), each with an index (``data-i``) for the page's script and a tooltip."""
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    ok = np.isfinite(xa) & np.isfinite(ya)
    x_lo, x_hi = (float(xa[ok].min()), float(xa[ok].max())) if ok.any() else (0.0, 1.0)
    y_lo, y_hi = (float(ya[ok].min()), float(ya[ok].max())) if ok.any() else (0.0, 1.0)
    frame = Frame(width, height, x_lo, x_hi, y_lo, y_hi, left=10, right=10, top=10, bottom=10)
    px, py = frame.px(xa), frame.py(ya)
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fcfcfd"/>']
    for i in (int(j) for j in np.flatnonzero(ok)):
        body.append(
            f'<circle data-i="{i}" cx="{px[i]:.1f}" cy="{py[i]:.1f}" r="3" '
            f'fill="{colours[i]}" stroke="#4a5568" stroke-width="0.3">'
            f"<title>{_esc(tooltips[i])}</title></circle>"
        )
    out = _svg(width, height, body, title)
    return out.replace("<svg ", f'<svg id="{_esc(svg_id)}" class="concept-map" ', 1)

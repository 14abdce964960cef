"""Small Markdown previews for materialisation metadata (the Dagster UI renders Markdown, with
images given as data URIs): a thumbnail grid of image files, and the report's top blindspots."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from blindspot_assets.report.svg import fmt


def _data_uri(path: Path, px: int, quality: int = 70) -> str | None:
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except OSError:
        return None
    img.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_grid_md(
    paths: Sequence[Path],
    captions: Sequence[str] | None = None,
    px: int = 64,
    per_row: int = 8,
    max_images: int = 16,
) -> str:
    """A Markdown table of small inline thumbnails (about 2–4 KB each), captions under them."""
    cells = []
    for i, path in enumerate(paths[:max_images]):
        uri = _data_uri(Path(path), px)
        if uri is None:
            continue
        caption = (captions[i] if captions and i < len(captions) else "").replace("|", "/")
        cells.append(f"![{caption}]({uri})" + (f"<br>{caption}" if caption else ""))
    if not cells:
        return "_(no images)_"
    rows = [cells[i : i + per_row] for i in range(0, len(cells), per_row)]
    width = len(rows[0])
    lines = ["|" + " |" * width, "|" + "---|" * width]
    for row in rows:
        lines.append("| " + " | ".join(row + [""] * (width - len(row))) + " |")
    return "\n".join(lines)


def blindspots_md(rows: Sequence[dict[str, object]], max_rows: int = 10) -> str:
    """A Markdown table of flagged concepts (model, kind, concept, name, δ, ΔE [CI], q)."""
    if not rows:
        return "_(no blindspots flagged)_"
    lines = [
        "| model | kind | concept | name | δ | ΔE [95% CI] | q |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows[:max_rows]:
        ci = r.get("delta_energy_ci")
        interval = f" [{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, tuple) else ""
        name = str(r.get("name") or "").replace("|", "/")
        lines.append(
            f"| {r.get('model')} | {r.get('kind')} | {r.get('concept')} | {name} | "
            f"{fmt(r.get('delta'))} | {fmt(r.get('delta_energy'))}{interval} | "
            f"{fmt(r.get('q_value'))} |"
        )
    return "\n".join(lines)

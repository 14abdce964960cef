"""Render the results tables and images into ``report/index.html``."""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.store.images import read_lineage, read_manifest
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.tables import read_table


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    n_models: int
    n_blindspots: int
    n_images: int


def _copy_image(cfg: RunConfig, dataset: str, image_id: str, out_dir: Path) -> str | None:
    src = cfg.layout.images(dataset) / f"{image_id}.png"
    if not src.exists():
        manifest = read_manifest(cfg.layout.images(dataset))
        row = manifest.filter(pl.col("image_id") == image_id)
        if row.is_empty() or not row["path"][0]:
            return None
        src = cfg.layout.images(dataset) / row["path"][0]
    rel = f"img/{dataset}/{image_id}{src.suffix}"
    dst = out_dir / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copyfile(src, dst)
    return rel


def build_report(
    cfg: RunConfig, out_dir: Path, per_kind: int = 5, per_concept: int = 6
) -> ReportSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    top = read_table(cfg.layout.tables, "concept_top_images")
    parts = [f"<h1>Conceptual blindspots — {html.escape(cfg.name)}</h1>"]
    n_blind = n_img = 0
    for model_key in cfg.models:
        try:
            flagged = read_table(cfg.layout.tables, "blindspots", model_key)
        except FileNotFoundError:
            continue
        n_blind += flagged.height
        lineage = read_lineage(cfg.layout.generated_images(model_key))
        parts.append(f"<h2>{html.escape(model_key)}</h2>")
        parts.append(f"<pre class='lineage'>{html.escape(json.dumps(lineage, indent=1))}</pre>")
        for kind, order in (("suppressed", False), ("exaggerated", True)):
            rows = flagged.filter(pl.col("kind") == kind).sort("delta_energy", descending=order)
            parts.append(f"<h3>{kind} ({rows.height})</h3>")
            for r in rows.head(per_kind).iter_rows(named=True):
                parts.append(
                    f"<div class='concept'><b>concept {r['concept']}</b> δ={r['delta']:.3f} "
                    f"ΔE={r['delta_energy']:.4g}<div class='gallery'>"
                )
                imgs = top.filter((pl.col("concept") == r["concept"]) & (pl.col("dataset") == REAL))
                for image_id in imgs.sort("rank")["image_id"].head(per_concept):
                    for dataset in (REAL, model_key):
                        rel = _copy_image(cfg, dataset, image_id, out_dir)
                        if rel:
                            n_img += 1
                            parts.append(f"<img src='{rel}' title='{dataset} {image_id}' width=96>")
                parts.append("</div></div>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>blindspots</title>"
        "<style>body{font-family:sans-serif;margin:2em}.gallery img{margin:2px}"
        ".lineage{font-size:11px;background:#f4f4f4;max-height:12em;overflow:auto}</style>"
        "</head><body>" + "\n".join(parts) + "</body></html>"
    )
    path = out_dir / "index.html"
    path.write_text(page)
    return ReportSummary(path, len(cfg.models), n_blind, n_img)

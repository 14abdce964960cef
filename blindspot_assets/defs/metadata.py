"""What the Dagster UI shows of a step: progress log lines, metadata values (JSON, markdown
tables, thumbnails) and asset-check results built from the library's ``CheckOutcome``."""

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from blindspot_assets.progress import progress_line
from blindspot_assets.quality import CheckOutcome

StepContext = dg.OpExecutionContext | dg.AssetExecutionContext


def progress_logger(
    context: StepContext, label: str, every_s: float = 5.0
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback logging done/total, rate and ETA every few seconds."""
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] < every_s and done < total:
            return
        last[0] = now
        context.log.info(progress_line(label, done, total, now - t0))

    return progress


def lineage_md(lineage: Mapping[str, Any]) -> dg.MetadataValue[Any]:
    """A JSON metadata value of anything JSON can say (other values as their ``str``)."""
    return dg.MetadataValue.json(json.loads(json.dumps(lineage, default=str)))


def metadata_values(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as Dagster metadata: mappings and lists as JSON, paths as paths."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, dg.MetadataValue):
            out[key] = value
        elif isinstance(value, Mapping | list | tuple):
            out[key] = dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
        elif isinstance(value, Path):
            out[key] = dg.MetadataValue.path(str(value))
        else:
            out[key] = value
    return out


def check_result(outcome: CheckOutcome) -> dg.AssetCheckResult:
    """An asset check's result from the library's verdict."""
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity(outcome.severity),
        metadata=metadata_values(outcome.metadata),
        description=outcome.description,
    )


def table_md(df: pl.DataFrame, max_rows: int = 15) -> dg.MetadataValue[Any]:
    """A markdown preview of a polars frame for the Dagster UI."""
    if df.is_empty():
        return dg.MetadataValue.md("_(no rows)_")
    head = df.head(max_rows)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def thumbnails(set_dir: Path, manifest: pl.DataFrame, n: int = 16) -> dg.MetadataValue[Any]:
    """A markdown grid of the first ``n`` usable images of a set, for the asset's UI page."""
    from blindspot_assets.report.preview import thumbnail_grid_md  # the report loads lazily

    ok = manifest.filter(pl.col("status") == "ok").head(n)
    return dg.MetadataValue.md(
        thumbnail_grid_md([set_dir / p for p in ok["path"]], ok["caption"].to_list())
    )

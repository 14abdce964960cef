"""Data checks between stages: what the asset checks of ``defs/checks.py`` evaluate.

Each function reads what an asset wrote (image folders, row stores, the SAE header, the Parquet
partitions) and returns a ``CheckOutcome``: passed or not, plain-JSON metadata, and a sentence
naming what to do. Checks over a partitioned asset look at every model whose output exists and
name the failing models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from blindspot_assets.config import RunConfig
from blindspot_assets.generators.registry import model_data_version
from blindspot_assets.sae.checkpoint import read_header
from blindspot_assets.stats.changes import regressions
from blindspot_assets.store.images import (
    model_version,
    read_lineage,
    read_manifest,
    sample_image_id,
)
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore, store_exists
from blindspot_assets.store.schema import TABLE_COLUMNS, table_problems
from blindspot_assets.store.tables import read_table

# Bounds of the SAE check. A warning, not an error: a small demo SAE may sit below them and the
# statistics still run; a real run below them deserves a look before anyone trusts its concepts.
SAE_MIN_R2 = 0.5
SAE_MAX_DEAD_FRACTION = 0.5


@dataclass(frozen=True)
class CheckOutcome:
    """The verdict of one check, its evidence (JSON-able) and, when useful, what to do."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    severity: Literal["ERROR", "WARN"] = "ERROR"


@dataclass(frozen=True)
class FeatureStoreScan:
    """A feature store read block by block: its shape, completeness and non-finite rows."""

    shape: tuple[int, ...]
    complete: bool
    n_valid: int
    nonfinite_rows: int

    def problems(self, expected_rows: int | None, token_shape: tuple[int, int] | None) -> list[str]:
        """What is wrong: rows unwritten, non-finite values, another (T, d) or row count."""
        problems = []
        if not self.complete:
            problems.append("not every row written")
        if self.nonfinite_rows:
            problems.append(f"{self.nonfinite_rows} valid rows with non-finite values")
        if len(self.shape) != 3 or (token_shape is not None and self.shape[1:] != token_shape):
            problems.append(
                f"tokens have shape {self.shape}, real features have (N, *{token_shape})"
            )
        if expected_rows is not None and self.shape[0] != expected_rows:
            problems.append(f"{self.shape[0]} rows for {expected_rows} manifest rows")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "nonfinite_rows": self.nonfinite_rows,
            "shape": str(self.shape),
            "complete": self.complete,
            "n_valid": self.n_valid,
        }


def scan_feature_store(path: str | Path) -> FeatureStoreScan:
    """Count the valid rows with a non-finite value, a block of rows at a time."""
    store = RowStore.open(path)
    tokens = store.array("tokens")
    valid = store.valid()
    nonfinite = 0
    for start, stop in store.iter_row_blocks():
        block = np.asarray(tokens[start:stop])[valid[start:stop]]
        nonfinite += int((~np.isfinite(block)).any(axis=tuple(range(1, block.ndim))).sum())
    return FeatureStoreScan(
        shape=tuple(int(s) for s in tokens.shape),
        complete=store.is_complete(),
        n_valid=int(valid.sum()),
        nonfinite_rows=nonfinite,
    )


def real_features_outcome(cfg: RunConfig) -> CheckOutcome:
    scan = scan_feature_store(cfg.layout.features(REAL))
    return CheckOutcome(passed=not scan.problems(None, None), metadata=scan.as_dict())


def per_model_outcome(
    per_model: Mapping[str, Any], metadata: Mapping[str, Any], when_empty: str
) -> CheckOutcome:
    """Passed when some model has output and none has problems; failing models named."""
    failing = sorted(m for m, r in per_model.items() if r["problems"])
    return CheckOutcome(
        passed=bool(per_model) and not failing,
        metadata={"per_model": dict(per_model), "failing_models": failing, **metadata},
        description=None if per_model else when_empty,
    )


def gen_features_outcome(cfg: RunConfig) -> CheckOutcome:
    """Every model's features finite, complete, one row per generated-manifest row, of the real
    features' (T, d)."""
    real_path = cfg.layout.features(REAL)
    token_shape = None
    if store_exists(real_path):
        shape = RowStore.open(real_path).array("tokens").shape
        token_shape = (int(shape[1]), int(shape[2]))
    per_model: dict[str, Any] = {}
    for model_key in cfg.models:
        path = cfg.layout.features(model_key)
        if not store_exists(path):
            continue
        n_rows = read_manifest(cfg.layout.generated_images(model_key)).height
        scan = scan_feature_store(path)
        per_model[model_key] = {**scan.as_dict(), "problems": scan.problems(n_rows, token_shape)}
    return per_model_outcome(
        per_model, {"real_token_shape": str(token_shape)}, "no model's features written yet"
    )


def table_outcome(cfg: RunConfig, table: str) -> CheckOutcome:
    """Every written partition of a per-model table against its schema rules."""
    per_model: dict[str, Any] = {}
    for model_key in cfg.models:
        try:
            df = read_table(cfg.layout.tables, table, model_key)
        except FileNotFoundError:
            continue
        per_model[model_key] = {"rows": df.height, "problems": table_problems(df, table, model_key)}
    return per_model_outcome(
        per_model,
        {"required_columns": list(TABLE_COLUMNS[table])},
        f"no partition of {table} written yet",
    )


def _finite_number(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def sae_quality_outcome(sae_dir: Path) -> CheckOutcome:
    """The SAE header's held-out metrics within bounds (a warning when not)."""
    try:
        header = read_header(sae_dir)
    except FileNotFoundError as exc:
        return CheckOutcome(passed=False, description=str(exc))
    metrics = header.get("metrics") or {}
    r2, dead = _finite_number(metrics.get("r2")), _finite_number(metrics.get("dead_fraction"))
    problems = []
    if r2 is None:
        problems.append(f"no finite r2 in the SAE header metrics (got {metrics.get('r2')!r})")
    elif not SAE_MIN_R2 <= r2 <= 1.0:
        problems.append(f"R² = {r2:.3f} outside [{SAE_MIN_R2}, 1]")
    if dead is None:
        got = metrics.get("dead_fraction")
        problems.append(f"no finite dead_fraction in the SAE header metrics (got {got!r})")
    elif not 0.0 <= dead <= SAE_MAX_DEAD_FRACTION:
        problems.append(f"dead fraction = {dead:.3f} above {SAE_MAX_DEAD_FRACTION}")
    meta: dict[str, Any] = {
        "r2": r2,
        "dead_fraction": dead,
        "min_r2": SAE_MIN_R2,
        "max_dead_fraction": SAE_MAX_DEAD_FRACTION,
        "problems": problems,
        "data_version": str(header.get("data_version")),
    }
    for key in ("mean_l0", "mse", "eval_tokens"):
        if isinstance(metrics.get(key), int | float):
            meta[key] = float(metrics[key])
    return CheckOutcome(
        passed=not problems,
        severity="WARN",
        metadata={k: v for k, v in meta.items() if v is not None},
    )


def controls_outcome(cfg: RunConfig) -> CheckOutcome:
    """Null controls flag nothing significant: any concept a control model, or the nuisance
    probe's history arm (``stats/nuisance.py``: a faithful PNG "model" of the real content
    against its real files' JPEG encode), flags under the significance verdict is a pipeline
    artefact. Flags of the paper's δ verdict alone on a control are reported, not failed: δ's
    thresholds are tied to the released SAE's scale and carry no error rate
    (docs/null-controls.md)."""
    flags: dict[str, Any] = {}
    for model_key in cfg.controls:
        try:
            df = read_table(cfg.layout.tables, "blindspots", model_key)
        except FileNotFoundError:
            continue
        flags[model_key] = {
            "paper_verdict": int(df["paper_verdict"].sum()),
            "significant": int(df["significant"].sum()),
        }
    probe = _probe_flags(cfg)
    if probe is not None:
        flags[PROBE] = probe
    dirty = {m: f for m, f in flags.items() if f["significant"]}
    paper_only = {m: f["paper_verdict"] for m, f in flags.items() if f["paper_verdict"]}
    if not cfg.controls and probe is None:
        description = (
            "the run registers no control: add one (family: control) or keep the nuisance "
            "probe on (stats.probe_images)"
        )
    elif not flags:
        description = "no control partition materialised yet"
    elif dirty:
        description = "; ".join(
            f"control {m} flags {f['significant']} significant concepts: a pipeline artefact, "
            "see docs/null-controls.md"
            for m, f in dirty.items()
        )
    else:
        description = f"controls {sorted(flags)}: 0 significant flags"
        if paper_only:
            description += (
                f" (the δ verdict alone flags {paper_only}: δ is not calibrated for this SAE)"
            )
    return CheckOutcome(
        passed=bool(flags) and not dirty,
        # an artefact on a control is an error; a run without one is unverified (a warning)
        severity="ERROR" if dirty else "WARN",
        metadata={"flags_per_control": flags},
        description=description,
    )


PROBE = "nuisance_probe:history"
"""How the probe's history arm is named among the controls (summary, check, report)."""


def _probe_flags(cfg: RunConfig) -> dict[str, int] | None:
    try:
        effects = read_table(cfg.layout.tables, "nuisance_effects")
    except FileNotFoundError:
        return None
    arm = effects.filter(pl.col("nuisance") == "history")
    if arm.is_empty():
        return None
    delta_flags = 0  # the probe reports the significance verdict only
    return {"paper_verdict": delta_flags, "significant": int(arm["significant"].sum())}


def real_images_outcome(set_dir: Path) -> CheckOutcome:
    """Every manifest row an image on disk or a recorded failure; ids unique."""
    manifest = read_manifest(set_dir)
    ok = manifest.filter(pl.col("status") == "ok")
    missing = [p for p in ok["path"] if not (set_dir / p).exists()]
    return CheckOutcome(
        passed=not missing and not manifest["image_id"].is_duplicated().any(),
        metadata={"n_missing_files": len(missing), "examples": missing[:5]},
    )


def _made_sets(cfg: RunConfig) -> list[str]:
    return [m for m in cfg.models if (cfg.layout.generated_images(m) / "manifest.parquet").exists()]


def generated_paired_outcome(cfg: RunConfig) -> CheckOutcome:
    """Every usable real image has its ``images_per_caption`` generated partners (or their
    recorded failures)."""
    real = read_manifest(cfg.layout.real_images)
    real_ids = real.filter(pl.col("status") == "ok")["image_id"].to_list()
    unpaired = {}
    for m in _made_sets(cfg):
        k = cfg.model(m).images_per_caption
        wanted = {sample_image_id(i, s) for i in real_ids for s in range(k)}
        unpaired[m] = len(wanted - set(read_manifest(cfg.layout.generated_images(m))["image_id"]))
    return CheckOutcome(passed=not any(unpaired.values()), metadata={"unpaired": unpaired})


def generated_current_outcome(cfg: RunConfig) -> CheckOutcome:
    """Each set made by the checkpoint version its model entry resolves to now."""
    outdated = {}
    for model_key in _made_sets(cfg):
        made_by = model_version(read_lineage(cfg.layout.generated_images(model_key)))
        current = model_data_version(cfg.model(model_key))
        if made_by != current:
            outdated[model_key] = {"made_by": made_by, "current": current}
    return CheckOutcome(
        passed=not outdated,
        metadata={"outdated_models": outdated},
        description=(
            f"re-materialise generated_images for {sorted(outdated)}" if outdated else None
        ),
    )


def changes_gate_outcome(cfg: RunConfig, table: str, keys: Sequence[str]) -> CheckOutcome:
    """The blindspot gate over the comparisons ``keys`` (partitions of ``table``): fails on a
    regression (``stats.fail_on``) or a comparison not computed."""
    if not keys:
        return CheckOutcome(
            passed=True,
            description="no comparison configured (stats.compare) and no archived model version",
        )
    per_comparison: dict[str, Any] = {}
    problems = []
    for key in keys:
        try:
            df = read_table(cfg.layout.tables, table, key)
        except FileNotFoundError:
            problems.append(f"{key}: not computed yet")
            continue
        bad = regressions(df, cfg.stats.fail_on)
        per_comparison[key] = {
            "regressions": bad.height,
            "concepts": [
                f"{r['concept']} {r['status']}-{r['kind']}" for r in bad.iter_rows(named=True)
            ],
        }
        if bad.height:
            problems.append(f"{key}: {bad.height} regression(s)")
    return CheckOutcome(
        passed=not problems,
        metadata={"per_comparison": per_comparison, "fail_on": list(cfg.stats.fail_on)},
        description="; ".join(problems) if problems else "no regression",
    )

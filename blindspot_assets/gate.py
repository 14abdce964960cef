"""The blindspot gate for CI: did the candidate model gain a blindspot over the base?

    python -m blindspot_assets.gate BASE CANDIDATE [--fail-on new-suppressed,...]
                                    [--config PATH] [--db PATH] [--rows N]

Reads the ``blindspot_changes`` table from the results database — materialised for each pair
of ``stats.compare: [[BASE, CANDIDATE]]``, and for every model against the version it replaced
(BASE ``MODEL@previous``, or an archived version's key ``MODEL@<version>`` listed in the table
``model_versions``) — prints the comparison's status counts and its changed concepts, and exits
0 when no concept matches ``--fail-on`` (default: the run config's ``stats.fail_on``,
``new-suppressed,new-exaggerated,worsened``), 1 on a regression, 2 when the gate cannot decide:
unknown model, no database or table yet, the comparison not computed, or computed from model
versions that are no longer the current ones (stale).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from blindspot_assets.config import ConfigError, StatsSpec, load_config, parse_fail_on
from blindspot_assets.stats.changes import regressions, status_counts
from blindspot_assets.store.layout import VERSION_SEP
from blindspot_assets.store.tables import query
from blindspot_assets.store.versions import PREVIOUS

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


class GateError(Exception):
    """The gate cannot decide (exit 2); the message says why and what to do."""


def _sql(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _query(db: Path, sql: str) -> pl.DataFrame:
    try:
        return query(db, sql)
    except duckdb.CatalogException as exc:
        raise GateError(
            f"{db} has no table this needs ({exc.args[0].splitlines()[0]}): materialise "
            "blindspot_changes (e.g. ./run demo, or the asset in the Dagster UI)"
        ) from exc


def load_comparison(db: Path, base: str, candidate: str) -> pl.DataFrame:
    """The ``blindspot_changes`` rows of base..candidate, checked to be current."""
    if not db.exists():
        raise GateError(f"no results database at {db}: run the pipeline first (./run demo)")
    current = _query(
        db, "SELECT model_key, any_value(model_version) AS v FROM concept_stats GROUP BY 1"
    )
    versions = dict(zip(current["model_key"], current["v"], strict=True))
    archived = _archived(db)
    base, candidate = (_resolve(k, archived) for k in (base, candidate))
    versions.update({k: v for k, (_, v) in archived.items()})
    unknown = [m for m in (base, candidate) if m not in versions]
    if unknown:
        raise GateError(f"unknown model(s) {unknown}: {db} has statistics for {sorted(versions)}")
    rows = _query(
        db,
        f"SELECT * FROM blindspot_changes WHERE base = {_sql(base)} "
        f"AND candidate = {_sql(candidate)} ORDER BY concept",
    )
    if rows.is_empty():
        fix = (
            "a model is compared with the version it replaced only (MODEL@previous)"
            if VERSION_SEP in base
            else f"add [{base}, {candidate}] to stats.compare in the run config"
        )
        raise GateError(
            f"comparison {base}..{candidate} not computed: {fix}, and materialise blindspot_changes"
        )
    stored = {base: rows["base_model_version"][0], candidate: rows["candidate_model_version"][0]}
    stale = [m for m, v in stored.items() if versions.get(m) != v]
    if stale:
        now = [versions.get(m) for m in stale]
        raise GateError(
            f"comparison {base}..{candidate} is stale: computed for {stale} at "
            f"{[stored[m] for m in stale]}, concept_stats now has {now}; re-materialise "
            "blindspot_changes"
        )
    return rows


def _archived(db: Path) -> dict[str, tuple[str, str]]:
    """Archived model versions (table model_versions): version key → (model, version)."""
    try:
        rows = query(
            db,
            "SELECT version_key, model_key, model_version FROM model_versions "
            "WHERE status = 'complete' ORDER BY archived_at",
        )
    except duckdb.Error:
        return {}
    return {r[0]: (r[1], r[2]) for r in rows.iter_rows()}


def _resolve(key: str, archived: dict[str, tuple[str, str]]) -> str:
    """``<model>@previous`` → the model's latest archived version key."""
    model, _, which = key.partition(VERSION_SEP)
    if which != PREVIOUS:
        return key
    keys = [k for k, (m, _) in archived.items() if m == model]
    if not keys:
        raise GateError(
            f"{model} has no archived version: one is kept when the model's checkpoint version "
            "changes and generated_images is materialised again"
        )
    return keys[-1]


def _names(db: Path) -> dict[int, str]:
    try:
        labels = query(db, "SELECT concept, term FROM concept_labels WHERE rank = 1")
    except duckdb.Error:
        return {}
    return dict(zip(labels["concept"], labels["term"], strict=True))


def render(rows: pl.DataFrame, bad: pl.DataFrame, names: dict[int, str], max_rows: int) -> str:
    """The short table the gate prints: counts, then the changed concepts, regressions first."""
    first = rows.row(0, named=True)
    counts = status_counts(rows)
    lines = [
        f"blindspot gate {first['base']} → {first['candidate']} "
        f"({first['n_pairs']} paired captions, sae {first.get('sae_version', '?')})",
        f"  base {first['base_model_version']}",
        f"  candidate {first['candidate_model_version']}",
        "  " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or "-" not in k),
    ]
    changed = rows.filter(pl.col("status") != "unchanged").with_columns(
        regression=pl.col("concept").is_in(bad["concept"].implode())
    )
    changed = changed.sort(["regression", "change_q_value"], descending=[True, False])
    if changed.height:
        lines.append(
            f"  {'concept':>7}  {'status':<10} {'kind':<11} {'ΔE base':>9} {'ΔE cand':>9} "
            f"{'change [95% CI]':>26} {'q':>8}  name"
        )
    for r in changed.head(max_rows).iter_rows(named=True):
        ci = f"{r['change']:+.3g} [{r['change_ci_low']:+.3g}, {r['change_ci_high']:+.3g}]"
        mark = "!" if r["regression"] else " "
        lines.append(
            f"{mark} {r['concept']:>7}  {r['status']:<10} {r['kind'] or '':<11} "
            f"{r['base_delta_energy']:>9.3g} {r['candidate_delta_energy']:>9.3g} {ci:>26} "
            f"{r['change_q_value']:>8.2g}  {names.get(r['concept'], '')}"
        )
    if changed.height > max_rows:
        lines.append(f"  … {changed.height - max_rows} more changed concepts")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blindspot_assets.gate",
        description="Fail when CANDIDATE has blindspot regressions against BASE "
        "(table blindspot_changes).",
    )
    parser.add_argument("base")
    parser.add_argument("candidate")
    parser.add_argument(
        "--fail-on",
        help="comma-separated statuses, optionally with a kind (default: the run config's "
        "stats.fail_on: new-suppressed,new-exaggerated,worsened)",
    )
    parser.add_argument("--config", help="run config YAML (default: $BLINDSPOT_CONFIG or demo)")
    parser.add_argument("--db", help="results DuckDB (default: the run config's)")
    parser.add_argument("--rows", type=int, default=20, help="changed concepts to print")
    args = parser.parse_args(argv)
    try:
        fail_on = StatsSpec().fail_on
        db = Path(args.db) if args.db else None
        if args.config or db is None:
            cfg = load_config(args.config)
            fail_on = cfg.stats.fail_on
            db = db or cfg.layout.duckdb
        if args.fail_on is not None:
            fail_on = parse_fail_on(args.fail_on, "--fail-on")
        rows = load_comparison(db, args.base, args.candidate)
    except (GateError, ConfigError) as exc:
        print(f"blindspot gate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bad = regressions(rows, fail_on)
    print(render(rows, bad, _names(db), args.rows))
    if bad.height:
        print(f"FAIL: {bad.height} regression(s) matching --fail-on {','.join(fail_on)}")
        return EXIT_REGRESSION
    print(f"PASS: no regression matching --fail-on {','.join(fail_on) or '(nothing)'}")
    return EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())

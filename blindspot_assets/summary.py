"""Print where a run's results are, and its blindspot counts.

``python -m blindspot_assets.summary [config.yaml]``
"""

from __future__ import annotations

import argparse
import sys

from blindspot_assets.config import RunConfig, load_config
from blindspot_assets.quality import controls_outcome
from blindspot_assets.query import hint
from blindspot_assets.store.tables import query


def main(config_path: str | None = None) -> int:
    cfg = load_config(config_path)
    db = cfg.layout.duckdb
    if not db.exists():
        print(f"no results yet: {db} does not exist (run the job first)")
        return 1
    print(f"\nResults of run config '{cfg.name}':")
    print(f"  DuckDB tables : {db}")
    print(f"  HTML report   : {cfg.layout.report / 'index.html'}")
    print(f"  features/codes: {cfg.layout.features('real')}, {cfg.layout.codes('real')}, ...")
    summary = query(
        db,
        "SELECT model_key, kind, count(*) AS n, "
        "count_if(paper_verdict)::INT AS paper, count_if(significant)::INT AS significant, "
        "count_if(paper_verdict AND significant)::INT AS both "
        "FROM blindspots GROUP BY ALL ORDER BY ALL",
    )
    print(summary)
    print(controls_verdict(cfg))
    print("Query it:", hint(db, "SELECT * FROM blindspots ORDER BY rank LIMIT 10"))
    return 0


def controls_verdict(cfg: RunConfig) -> str:
    """One line saying whether the run's null controls — control models and the nuisance
    probe's history arm — are clean, so nobody reads a run whose controls flag concepts as if
    it were trustworthy (the asset check ``controls_clean`` says the same)."""
    outcome = controls_outcome(cfg)
    if outcome.passed:
        return f"Controls: clean — {outcome.description}."
    if outcome.severity == "ERROR":
        return (
            f"Controls: NOT CLEAN — {outcome.description}; no model's blindspot is evidence "
            "until they are explained."
        )
    return f"Controls: NONE — {outcome.description}."


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blindspot_assets.summary")
    parser.add_argument("config", nargs="?", help="run config YAML (default: $BLINDSPOT_CONFIG)")
    return main(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(cli())

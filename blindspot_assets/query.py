"""Query a run's results database from the terminal (the environment has no ``duckdb`` CLI: the
Python package is the one DuckDB it ships).

``python -m blindspot_assets.query [--db PATH | --config YAML] "SELECT ..."``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from blindspot_assets.config import load_config
from blindspot_assets.store.tables import query

PROG = "python -m blindspot_assets.query"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("sql", help='the query, e.g. "SELECT * FROM blindspots LIMIT 10"')
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="the DuckDB file (default: the run config's)")
    where.add_argument("--config", help="run config YAML (default: $BLINDSPOT_CONFIG or demo)")
    parser.add_argument("--rows", type=int, default=50, help="rows to print (default 50)")
    args = parser.parse_args(argv)
    db = args.db if args.db is not None else load_config(args.config).layout.duckdb
    if not db.exists():
        print(f"{db} does not exist (run the job first)", file=sys.stderr)
        return 1
    with pl.Config(tbl_rows=args.rows, tbl_cols=-1, fmt_str_lengths=60):
        print(query(db, args.sql))
    return 0


def hint(db: Path, sql: str) -> str:
    """The command line that runs ``sql`` on ``db``, as printed for a user."""
    return f'{PROG} --db {db} "{sql}"'


if __name__ == "__main__":
    sys.exit(main())

"""Every command line the project prints for a user (hints, fixes, usage lines), in one place:
a test runs each one's ``--help`` in the locked environment, and fails on a printed command
line that starts with a program not listed here."""

from __future__ import annotations

PRINTED = (
    "hf download",  # huggingface_hub's CLI (``huggingface-cli`` is gone since hub 1.0)
    "python -m blindspot_assets.query",
    "python -m blindspot_assets.summary",
    "python -m blindspot_assets.validate",
    "python -m blindspot_assets.gate",
    "python -m blindspot_assets.report",
    "python -m blindspot_assets.runlock",
    "python -m blindspot_assets.paper_tables",
    "python -m blindspot_assets.demo.paper_shapes",
    "dagster job execute",
    "dagster job backfill",
    "dagster asset materialize",
    "dagster dev",
)
"""Each entry is a program and subcommand; ``<entry> --help`` must succeed."""

RUN_VERBS = ("./run demo", "./run test", "./run dev", "./run slots", "./run setup", "./run lock")
"""The repository's ``./run`` commands the project prints; each is listed in ``./run``'s usage."""

"""The Dagster layer: assets, checks, partitions, resources and jobs. Thin: each asset reads the
run config, calls one library function, and records metadata."""

import warnings

import dagster as dg

# Dagster marks some current APIs (backfill_policy, pool) beta; silence that for dagster only.
warnings.filterwarnings("ignore", category=dg.BetaWarning, module=r"dagster(\..*)?$")
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module=r"dagster(\..*)?$")

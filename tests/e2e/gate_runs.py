"""What the gate tests share: materialise a selection of the graph on a run config (with its
asset checks) and run the gate CLI in a subprocess, as CI does."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from blindspot_assets.definitions import _modules
from blindspot_assets.defs.resources import RunConfigResource
from tests.conftest import REPO


def materialize_with_checks(
    config_path: Path, selection: list[str], tags: dict[str, str]
) -> dict[str, bool]:
    """Materialise ``selection`` (must succeed); each asset check's name → passed."""
    result = dg.materialize(
        [*dg.load_assets_from_modules(_modules), *dg.load_asset_checks_from_modules(_modules)],
        selection=selection,
        instance=dg.DagsterInstance.ephemeral(),
        tags=tags,
        resources={"run_config": RunConfigResource(config_path=str(config_path))},
    )
    assert result.success
    return {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def gate(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m blindspot_assets.gate ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "blindspot_assets.gate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

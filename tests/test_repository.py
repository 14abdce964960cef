"""The repository as a whole: one copy of the Dagster instance settings, linked (never copied)
into ``$DAGSTER_HOME`` by ``./run``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO

# Folders that are not the repository's own files: environments, caches, run outputs.
NOT_OURS = {
    ".git",
    ".venv",
    ".tools",
    ".whl",
    "build",
    "data",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}


def repository_files() -> list[Path]:
    """Every file of the checkout outside ``NOT_OURS`` (tracked or not: a new file counts)."""
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in NOT_OURS and not d.endswith(".egg-info")]
        files.extend(Path(root) / name for name in names)
    return files


def test_one_dagster_yaml_in_the_repository():
    """A second copy would drift: any other dagster.yaml must be a link to ./dagster.yaml."""
    one = REPO / "dagster.yaml"
    copies = [
        str(p.relative_to(REPO))
        for p in repository_files()
        if p.name == "dagster.yaml" and p != one and p.resolve() != one
    ]
    assert copies == [], f"only ./dagster.yaml holds the instance settings; remove {copies}"


def _run_home(home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.run(
        ["bash", str(REPO / "run"), "home"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_run_links_dagster_home_to_the_one_dagster_yaml(tmp_path):
    one = (REPO / "dagster.yaml").resolve()
    fresh = tmp_path / "fresh"
    _run_home(fresh)
    assert (fresh / "dagster.yaml").is_symlink() and (fresh / "dagster.yaml").resolve() == one
    _run_home(fresh)  # again: still the link, nothing else written
    assert (fresh / "dagster.yaml").resolve() == one
    assert sorted(p.name for p in fresh.iterdir()) == ["dagster.yaml"]

    # A dangling link (the checkout moved) is pointed at this checkout again.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "dagster.yaml").symlink_to(tmp_path / "gone" / "dagster.yaml")
    _run_home(moved)
    assert (moved / "dagster.yaml").resolve() == one

    # An old identical copy (what ./run used to write) becomes the link.
    copied = tmp_path / "copied"
    copied.mkdir()
    (copied / "dagster.yaml").write_text(one.read_text())
    _run_home(copied)
    assert (copied / "dagster.yaml").is_symlink() and (copied / "dagster.yaml").resolve() == one

    # A user's own instance config is kept, with a warning naming both files.
    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    result = _run_home(own)
    assert not (own / "dagster.yaml").is_symlink()
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert "differs from" in result.stderr and str(own / "dagster.yaml") in result.stderr

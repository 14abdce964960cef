"""The locked environment: requirements.lock agrees with pyproject.toml, the installed packages
are the locked ones, every module the package imports is declared, and every command line the
project prints for a user exists here."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from blindspot_assets.commands import PRINTED, RUN_VERBS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "blindspot_assets"
DIRECT = "blindspot-assets (pyproject.toml)"


def _lock(path: Path) -> tuple[dict[str, Version], set[str], dict[str, int]]:
    """name → locked version; the names the lock says come from pyproject.toml itself; name →
    number of hashes."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    hashes: dict[str, int] = {}
    current = ""
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            current = canonicalize_name(m.group(1))
            pins[current] = Version(m.group(2))
            hashes[current] = 0
        elif "--hash=sha256:" in line:
            hashes[current] += 1
        elif DIRECT in line:
            direct.add(current)
    return pins, direct, hashes


def _declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = [Requirement(r) for r in project["dependencies"]]
    extras = [Requirement(r) for rs in project["optional-dependencies"].values() for r in rs]
    return main, extras


def test_lock_agrees_with_pyproject():
    """Each requirement of pyproject.toml (main and every extra) is pinned in the lock at a
    version it allows; the lock's direct entries are exactly those requirements; every entry
    carries its hashes. A requirement added, dropped or re-ranged without ``./run lock`` fails."""
    pins, direct, hashes = _lock(ROOT / "requirements.lock")
    main, extras = _declared()
    wanted = {canonicalize_name(r.name): r for r in main + extras}
    unpinned = sorted(set(wanted) - set(pins))
    assert not unpinned, f"in pyproject.toml but not in requirements.lock: {unpinned} (./run lock)"
    outside = {
        n: str(pins[n]) for n, r in wanted.items() if not r.specifier.contains(pins[n], True)
    }
    assert not outside, f"locked versions outside pyproject.toml's ranges: {outside} (./run lock)"
    assert direct == set(wanted), (
        f"lock's direct entries differ from pyproject.toml: only in the lock "
        f"{sorted(direct - set(wanted))}, only in pyproject {sorted(set(wanted) - direct)}"
    )
    assert all(n > 0 for n in hashes.values()), [k for k, n in hashes.items() if not n]
    assert str(pins["torch"]) == "2.13.0+cpu"  # the CPU build, never a CUDA one
    assert not [n for n in pins if n.startswith("nvidia-") or n in {"torchvision", "triton"}]


def test_installed_environment_is_the_lock():
    """The interpreter running the tests has exactly the locked version of every package."""
    pins, _, _ = _lock(ROOT / "requirements.lock")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}
    differ = {n: (str(v), installed.get(n)) for n, v in pins.items() if installed.get(n) != str(v)}
    assert not differ, f"installed ≠ locked (./run setup syncs): {differ}"
    extra = set(installed) - set(pins) - {"blindspot-assets", "pip"}
    assert not extra, f"installed but not locked: {sorted(extra)}"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level module names imported at module level, and inside functions (lazily)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # not imported at run time
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            (lazy if inner else top).update(n.split(".")[0] for n in names)
            visit(child, inner)

    visit(tree, False)
    return top, lazy


def test_every_imported_module_is_declared():
    """A module the package imports at load time comes from a main dependency; one imported
    lazily (an optional executor, say) from a main dependency or an extra — never from a package
    that only happens to arrive with another."""
    main, extras = _declared()
    main_names = {canonicalize_name(r.name) for r in main}
    all_names = main_names | {canonicalize_name(r.name) for r in extras}
    providers = md.packages_distributions()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top, lazy = _imports(path)
        for module, allowed in [(m, main_names) for m in top] + [(m, all_names) for m in lazy]:
            if module in sys.stdlib_module_names or module == "blindspot_assets":
                continue
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & allowed:
                problems.append(f"{path.relative_to(ROOT)}: {module} (from {sorted(dists)})")
    assert not problems, "imported but not declared in pyproject.toml:\n" + "\n".join(problems)


@pytest.mark.parametrize("command", PRINTED)
def test_each_printed_command_runs(command):
    """``<command> --help`` succeeds in the locked environment (the venv's bin first on PATH,
    ``python`` the venv's interpreter, from the repository root)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    line = command.replace("python ", f"{sys.executable} ", 1)
    done = subprocess.run(
        f"{line} --help", shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command} --help: {done.stdout[-800:]}{done.stderr[-800:]}"
    assert "usage" in (done.stdout + done.stderr).lower()


# a command line in a string the package prints: a program name at the start, or after "fix: ",
# "run " or a backtick
_COMMAND_RE = re.compile(
    r"(?:^|fix: |[Rr]un |`|Query it: )((?:hf|huggingface-cli|duckdb|dagster|python -m|\./run)"
    r"(?: [\w.\-]+){1,2})"
)


def test_no_printed_command_outside_the_list():
    """A string in the package that tells a user to run a command names one of ``PRINTED``
    (``huggingface-cli download …`` or ``duckdb …`` fail here: neither exists any more)."""
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            for found in _COMMAND_RE.findall(node.value):
                if not any(found.startswith(p) for p in PRINTED + RUN_VERBS):
                    strays.append(f"{path.relative_to(ROOT)}: {found!r}")
    assert not strays, "printed commands not in blindspot_assets/commands.py:\n" + "\n".join(strays)


def test_run_verbs_are_in_the_usage():
    """Every ``./run`` verb the project prints is one ``./run`` knows (its usage lists it)."""
    done = subprocess.run([str(ROOT / "run")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    listed = set(re.findall(r"\./run [a-z\-]+", done.stdout))
    assert set(RUN_VERBS) <= listed, sorted(set(RUN_VERBS) - listed)

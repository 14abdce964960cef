"""Code versions derived from the code each asset runs, so Dagster's staleness view means something.

The rule: each asset declares, next to its definition, the library modules that compute its
output (``code_version("concept_stats", "stats.concepts", "stats.energy", ...)``; a package name
covers every module in it). Its ``code_version`` is the first 12 hex digits of a SHA-256 over
those modules' code, each normalised to its syntax tree without docstrings — so a change to the
code of a covered module gives the asset a new code version (Dagster then marks it, and what is
downstream of it, stale), while comments, docstrings and formatting do not; a change to a
module no asset declares changes no code version.

What is not covered: this Dagster layer (asset bodies only read config, call the library and
write metadata), and shared plumbing (config, stores, progress) unless an asset declares it.
``COVERED`` records each asset's declared modules; the asset-graph snapshot records those, not
the hash values, so editing a module leaves the snapshot alone. ``tests/test_asset_graph.py``
proves the rule: changing a covered module changes that asset's version and no other asset's.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # blindspot_assets/

# asset name → the library modules (relative to blindspot_assets) its code version covers
COVERED: dict[str, tuple[str, ...]] = {}

SourceOf = Callable[[str], str]


def module_files(name: str) -> list[str]:
    """The modules a declared name stands for: itself, or every module of a package."""
    path = PACKAGE_ROOT / name.replace(".", "/")
    if path.is_dir():
        return sorted(
            str(p.relative_to(PACKAGE_ROOT).with_suffix("")).replace("/", ".")
            for p in path.rglob("*.py")
        )
    if not path.with_suffix(".py").is_file():
        raise ValueError(f"code_version covers {name!r}, which is no module of blindspot_assets")
    return [name]


def read_source(module: str) -> str:
    """The source text of ``blindspot_assets.<module>`` (``__init__`` for a package)."""
    return (PACKAGE_ROOT / (module.replace(".", "/") + ".py")).read_text()


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(source: str) -> str:
    """The code of a module, without comments, docstrings and formatting."""
    return ast.dump(_without_docstrings(ast.parse(source)), include_attributes=False)


@functools.cache
def _module_fingerprint(module: str) -> str:
    return code_fingerprint(read_source(module))  # once per module while the location loads


def version_of(names: Iterable[str], source_of: SourceOf = read_source) -> str:
    """The code version of the modules ``names`` stand for."""
    digest = hashlib.sha256()
    for module in sorted({m for name in names for m in module_files(name)}):
        if source_of is read_source:
            code = _module_fingerprint(module)
        else:
            code = code_fingerprint(source_of(module))
        digest.update(module.encode() + b"\0" + code.encode())
    return digest.hexdigest()[:12]


def code_version(asset: str, *modules: str) -> str:
    """Declare the modules ``asset`` runs; its code version (see the module docstring)."""
    if not modules:
        raise ValueError(f"{asset}: declare at least one library module its code version covers")
    COVERED[asset] = tuple(sorted(modules))
    return version_of(modules)

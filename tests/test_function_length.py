"""No library function is longer than 80 lines (issue 15): a long one is split into steps."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "blindspot_assets"
MAX_LINES = 80


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (n lines)`` of every function or method longer than ``limit`` lines
    (decorators excluded, docstring included)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n})")
    return found


def test_no_library_function_is_longer_than_80_lines() -> None:
    assert long_functions(LIBRARY, MAX_LINES) == []


def test_the_scan_sees_a_long_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (package / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(package, MAX_LINES) == [f"pkg/m.py:5 long ({MAX_LINES + 1})"]

"""The repository as a whole: one copy of the Dagster instance settings, linked (never copied)
into ``$DAGSTER_HOME`` by ``./run``; self-contained: no file points at a document outside it,
and every ``docs/method.md §N`` a docstring cites exists; the README maps every asset to its
``defs/`` module and library function. About 2 s, plus loading the Definitions once."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO


def repository_files() -> list[Path]:
    """Every file of the checkout that git does not ignore, tracked or not (a new file
    counts; environments, caches and the outputs of ``./run demo`` do not: .gitignore says
    which those are, and a demo run before the tests must not fail them)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = (REPO / name for name in listed.split("\0") if name)
    return [p for p in paths if p.is_file()]


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


# What a file of this repository must not point at: the notes it was built from live outside it,
# and its users never see them. (This file names the patterns, so it is not scanned.)
OUTSIDE = re.compile(
    r"design\.md|paper-summary|style\.md|stack-notes|shared/|/work/", re.IGNORECASE
)
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
METHOD_CITE = re.compile(r"\b(docs/[\w-]+\.md)\s+§(\d+)")


def text_files() -> dict[Path, str]:
    """The repository's text files (binary ones, like the released SAE fixtures, are left out)."""
    out = {}
    for path in repository_files():
        if path == Path(__file__).resolve() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:
            out[path] = data.decode("utf-8", errors="replace")
    return out


def test_no_file_refers_to_a_document_outside_the_repository():
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path, text in text_files().items()
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == [], "write what the outside document says into docs/ instead:\n" + "\n".join(
        hits
    )


def test_markdown_links_stay_inside_the_repository_and_exist():
    bad = []
    for path, text in text_files().items():
        if path.suffix != ".md":
            continue
        for target in MD_LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                bad.append(f"{path.relative_to(REPO)} → {target}")
    assert bad == []


def test_every_cited_method_section_exists():
    """A docstring's ``docs/method.md §N`` names a file of docs/ and a heading ``## §N`` in it."""
    cited = {
        (doc, section)
        for text in text_files().values()
        for doc, section in METHOD_CITE.findall(text)
    }
    assert ("docs/method.md", "4") in cited  # the scan sees the library's docstrings
    missing = [
        f"{doc} §{section}"
        for doc, section in sorted(cited)
        if not (REPO / doc).exists()
        or not re.search(rf"^## §{section}\b", (REPO / doc).read_text(), re.MULTILINE)
    ]
    assert missing == []


def asset_table_rows() -> list[tuple[list[str], list[str], list[str]]]:
    """The README's asset table: per row the asset keys, the ``defs/`` modules and the library
    functions its "code" column names."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The asset graph") :]
    section = section[: section.index("\n## ", 1)]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "asset" and header[-1] == "code", header
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[-1])
        rows.append(
            (
                re.findall(r"`(\w+)`", cells[0]),
                [n for n in names if n.startswith("defs/")],
                [n for n in names if re.fullmatch(r"[a-z_]+(\.\w+)+", n)],
            )
        )
    return rows


def test_readme_maps_every_asset_to_its_module_and_library_function():
    """One step from an asset key to its code: the README's asset table lists every asset of
    the graph, the ``defs/`` module that defines it and the library function it calls."""
    import importlib

    from blindspot_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    rows = asset_table_rows()
    assert {key for row_keys, _, _ in rows for key in row_keys} == keys
    for row_keys, modules, functions in rows:
        assert modules and functions, f"{row_keys}: name the defs/ module and library function"
        sources = [(REPO / "blindspot_assets" / m).read_text() for m in modules]
        for key in row_keys:
            assert any(re.search(rf"\b{key}\b", s) for s in sources), f"{key} not in {modules}"
        for dotted in functions:
            module, _, name = dotted.rpartition(".")
            target = importlib.import_module(f"blindspot_assets.{module}")
            assert callable(getattr(target, name, None)), f"{dotted} is no library function"
            assert not module.startswith("defs"), f"{dotted}: name the library, not defs/"


def test_readme_is_short_and_its_graph_draws_every_asset():
    """The README is the front page (two commands, the UI, the graph, where results are); the
    rest lives in docs/ and CONTRIBUTING.md. Its graph names every asset of the code location."""
    from blindspot_assets.definitions import defs

    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    graph = text[text.index("## The asset graph") : text.index("| asset | partitioned |")]
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert sorted(k for k in keys if not re.search(rf"\b{k}\b", graph)) == []
    assert (REPO / "CONTRIBUTING.md").is_file()


MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_of_the_docs_names_a_file_of_the_repository():
    docs = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = [
        f"{doc.relative_to(REPO)} → {target}"
        for doc in docs
        for target in MARKDOWN_LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert broken == []

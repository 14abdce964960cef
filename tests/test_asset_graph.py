"""The lineage graph never changes by accident: keys, groups, deps, partitions, the modules each
code version covers and kinds are snapshotted. After a deliberate change: UPDATE_SNAPSHOTS=1
pytest this file. Code versions follow the rule of ``defs/versions.py``, proven here."""

import json
import os
import re
from pathlib import Path

from blindspot_assets.definitions import defs
from blindspot_assets.defs.versions import COVERED, module_files, read_source, version_of

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot() -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    out: dict[str, object] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        pdef = node.partitions_def
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": (
                {"type": type(pdef).__name__, "keys": pdef.get_partition_keys()} if pdef else None
            ),
            "code_version_covers": list(COVERED.get(key.to_user_string(), ())),
            "kinds": sorted(node.kinds),
            "checks": sorted(c.name for c in node.check_keys),
            "pools": sorted(node.pools or ()),
        }
    return out


def test_asset_graph_matches_snapshot():
    current = graph_snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":  # only when asked: never in CI
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), (
        f"{SNAPSHOT} is missing: the graph has nothing to be compared with. Write it with "
        "UPDATE_SNAPSHOTS=1 pytest tests/test_asset_graph.py, review it and commit it"
    )
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_asset_is_described_and_grouped_by_stage():
    graph = defs.resolve_asset_graph()
    stages = {"inputs", "generation", "features", "concepts", "analysis"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in stages, key
        assert node.description, key


def test_library_never_imports_dagster():
    root = Path(__file__).resolve().parent.parent / "blindspot_assets"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "defs" not in p.parts
        and p.name != "definitions.py"
        and ("import dagster" in p.read_text() or "from dagster" in p.read_text())
    ]
    assert offenders == []


def _versions(source_of=read_source) -> dict[str, str]:
    return {asset: version_of(modules, source_of) for asset, modules in COVERED.items()}


def test_code_versions_follow_the_rule():
    """Every materialisable asset declares what it runs; its code version is that code's hash."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        name = key.to_user_string()
        assert name in COVERED, f"{name}: declare its modules with defs.versions.code_version"
        assert node.code_version == version_of(COVERED[name]), name
        assert re.fullmatch(r"[0-9a-f]{12}", node.code_version), name
    # a hash of the code: the same modules give the same version, other modules another one
    files = {a: frozenset(m for n in mods for m in module_files(n)) for a, mods in COVERED.items()}
    versions = _versions()
    for a in COVERED:
        for b in COVERED:
            assert (versions[a] == versions[b]) == (files[a] == files[b]), (a, b)


def _edited(module: str):  # type: ignore[no-untyped-def]
    def source_of(name: str) -> str:
        return read_source(name) + ("\nEDITED = 1\n" if name == module else "")

    return source_of


def test_every_declared_module_counts_in_the_version():
    """An edit to the code of any module an asset declares — not only its first — changes its
    code version: each module of two declared, and the last module of every asset."""
    pair = ("stats.concepts", "stats.cooccurrence")
    for module in pair:
        assert version_of(pair, _edited(module)) != version_of(pair), module
    for asset, mods in COVERED.items():
        last = module_files(mods[-1])[-1]
        assert version_of(mods, _edited(last)) != version_of(mods), (asset, last)


def test_a_changed_module_changes_only_the_assets_that_run_it():
    before = _versions()
    edited = "stats.cooccurrence"

    def with_edit(module: str) -> str:
        source = read_source(module)
        return source + "\nBLOCK_FACTOR = 2\n" if module == edited else source

    after = _versions(with_edit)
    changed = {a for a in before if before[a] != after[a]}
    assert changed == {a for a, mods in COVERED.items() if edited in mods or "stats" in mods}
    assert changed == {"concept_cooccurrence"}

    def with_docs(module: str) -> str:  # comments, docstrings and formatting are not code
        source = read_source(module)
        if module != edited:
            return source
        return source.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n"

    assert _versions(with_docs) == before

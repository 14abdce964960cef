"""The lineage graph never changes by accident: keys, groups, deps, partitions, code versions
and kinds are snapshotted. After a deliberate change: UPDATE_SNAPSHOTS=1 pytest this file."""

import json
import os
from pathlib import Path

from blindspot_assets.definitions import defs

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
            "code_version": node.code_version,
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

"""The lineage graph never changes by accident: keys, groups, deps, partitions, the library
modules each asset's body calls, the config blocks it reads and kinds are snapshotted. After a
deliberate change: UPDATE_SNAPSHOTS=1 pytest this file. Code versions follow the rule of
``defs/versions.py``; the expected sets below are written by hand, not taken from it."""

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from blindspot_assets.definitions import defs
from blindspot_assets.defs.versions import (
    COVERAGE,
    UndeclaredConfig,
    closure,
    config_view,
    current_versions,
    folded,
    imports_of,
    loaded_config,
    read_source,
)
from blindspot_assets.generators.registry import FAMILY_MODULES
from blindspot_assets.sources.registry import SOURCE_MODULES

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _coverage(asset: str, what: str) -> tuple[str, ...]:
    return getattr(COVERAGE[asset], what) if asset in COVERAGE else ()


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
            "code_roots": list(_coverage(key.to_user_string(), "roots")),
            "config_reads": list(_coverage(key.to_user_string(), "reads")),
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


STATS_READERS = {
    "concept_stats", "nuisance_probe", "blindspots", "concept_top_images", "datapoint_deltas",
    "memorization_candidates", "concept_labels", "concept_cooccurrence", "concept_map",
    "model_comparison", "blindspot_changes", "blindspot_verification", "report",
}  # fmt: skip
# the assets whose bodies reach stats/scores.py (δ): through stats.concepts or stats.run_tables,
# which every table asset calls to write its table
SCORES_RUNNERS = STATS_READERS
ASSETS = {
    "real_images", "generated_images", "real_features", "gen_features", "sae",
    "real_concept_codes", "concept_codes", "concept_names", *STATS_READERS,
}  # fmt: skip


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {a for a in before if before[a] != after[a]}


def _parents() -> dict[str, set[str]]:
    graph = defs.resolve_asset_graph()
    return {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }


def _with_downstream(assets: set[str]) -> set[str]:
    parents = _parents()
    out = set(assets)
    while grown := {a for a, ps in parents.items() if ps & out and a not in out}:
        out |= grown
    return out


def _folded_change(source_of=None, cfg=None) -> set[str]:  # type: ignore[no-untyped-def]
    """The assets whose code version in the graph (folded with upstream) an edit changes."""
    before = folded(current_versions(), _parents())
    return _changed(before, folded(current_versions(source_of, cfg), _parents()))


def test_every_asset_has_a_derived_code_version():
    graph = defs.resolve_asset_graph()
    materialisable = {
        k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable
    }
    assert materialisable == ASSETS == set(COVERAGE)
    versions = folded(current_versions(), _parents())
    for name in materialisable:
        node = graph.get(dg_key(name))
        assert re.fullmatch(r"[0-9a-f]{12}", node.code_version or ""), name
        assert node.code_version == versions[name], name


def dg_key(name: str):  # type: ignore[no-untyped-def]
    import dagster as dg

    return dg.AssetKey(name)


def test_a_config_edit_changes_the_assets_that_read_the_block_and_no_other():
    cfg = loaded_config()
    before = current_versions(cfg=cfg)
    params = replace(cfg.stats.params, temperature=0.3)
    assert (
        _changed(
            before, current_versions(cfg=replace(cfg, stats=replace(cfg.stats, params=params)))
        )
        == STATS_READERS
    )
    encoder = replace(cfg, encoder=replace(cfg.encoder, image_size=112))
    assert _changed(before, current_versions(cfg=encoder)) == {
        "real_features", "gen_features", "nuisance_probe", "blindspot_verification",
        "concept_names",  # the labeller sees the top images as the encoder did
    }  # fmt: skip
    first = next(iter(cfg.models))
    models = {**cfg.models, first: replace(cfg.models[first], images_per_caption=3)}
    assert _changed(before, current_versions(cfg=replace(cfg, models=models))) == {
        "generated_images", "gen_features", "blindspots", "concept_top_images",
        "model_comparison", "blindspot_changes", "blindspot_verification", "concept_names",
        "report",
    }  # fmt: skip
    assert (
        _changed(before, current_versions(cfg=replace(cfg, data_root=Path("/elsewhere")))) == ASSETS
    )
    assert current_versions(cfg=replace(cfg, source_path=Path("/moved.yaml"))) == before
    # in the graph, each version is folded with its ancestors': the downstream goes stale too
    stats = replace(cfg, stats=replace(cfg.stats, params=params))
    assert _folded_change(cfg=stats) == STATS_READERS | {"concept_names"}
    assert _folded_change(cfg=encoder) == ASSETS - {"real_images", "generated_images"}


def _edited(module: str, edit: str):  # type: ignore[no-untyped-def]
    def source_of(name: str) -> str:
        source = read_source(name)
        if name != module:
            return source
        if edit == "docs":  # comments, docstrings and formatting are not code
            return source.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n\n"
        return source + "\nEDITED = 1\n"

    return source_of


@pytest.mark.parametrize(
    ("module", "runners"),
    [
        ("stats.scores", SCORES_RUNNERS),
        ("stats.cooccurrence", {"concept_cooccurrence"}),
        ("report.html", {"report"}),
        ("labels.vlm", {"concept_names"}),
        ("sources.demo", {"real_images"}),
    ],
)
def test_a_code_edit_changes_the_assets_that_run_it_and_a_docstring_edit_nothing(module, runners):
    before = current_versions()
    after = current_versions(_edited(module, "code"))
    assert _changed(before, after) == runners
    parents = _parents()
    assert _changed(folded(before, parents), folded(after, parents)) == _with_downstream(runners)
    assert current_versions(_edited(module, "docs")) == before


def test_the_closure_follows_function_local_imports_and_modules_named_by_string():
    prefix = "blindspot_assets."
    families = {m.removeprefix(prefix) for m in FAMILY_MODULES.values()}
    sources = {m.removeprefix(prefix) for m in SOURCE_MODULES.values()}
    assert families <= imports_of("generators.registry")  # imported by name (importlib)
    assert sources <= imports_of("sources.registry")
    # config.py imports sae.config in a function body (and, for types only, stats.params)
    assert "sae.config" in imports_of("config")
    assert closure(["stats.cooccurrence"]) == tuple(
        sorted({"stats.cooccurrence", *closure(imports_of("stats.cooccurrence"))})
    )


def test_an_asset_body_sees_only_the_config_blocks_it_declares():
    cfg = loaded_config()
    view = config_view(cfg, "concept_stats")
    assert view.stats == cfg.stats and view.layout.codes("real") == cfg.layout.codes("real")
    for read in (
        lambda: view.models["demo-a"],
        lambda: view.model("demo-a"),
        lambda: view.encoder.batch_size,
        lambda: int(view.seed),
    ):
        with pytest.raises(UndeclaredConfig, match="concept_stats reads the run config"):
            read()

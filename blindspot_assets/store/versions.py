"""Earlier versions of a model, kept when a new version replaces them.

A model's outputs — generated images, features, concept codes, its partition of every table —
are keyed by the model's key. When the checkpoint a model entry resolves to changes (a new hub
revision, new local weights, new demo settings), the next ``generated_images`` run must not reuse
the old version's images, and the old version's results are the base a model builder compares
the new one with. So before generating, the outputs of the version being replaced are moved
into the *version archive*, under the version key ``<model>@<version>``:

    <root>/versions/images/<model>@<v>/           generated images, manifest, lineage
    <store_root>/versions/features/<model>@<v>.zarr
    <store_root>/versions/codes/<model>@<v>.zarr
    <store_root>/versions/tables/<table>/<model>@<v>.parquet   every per-model table

The archive is a :class:`DataLayout` of its own (``archive_layout``), so an archived version is
read exactly like a current model (``locate(layout, key).codes(key)``), and it stays out of the
current tables' DuckDB views (no model appears twice in a cross-model table). The table
``model_versions`` (one partition per model) lists each archived version: its key, the version
string, when it was archived and what was moved. ``<model>@previous`` names the latest one.

Archiving is crash-safe: the ``model_versions`` row is written first with status ``archiving``,
then each output is moved (a move whose source is gone and target present is already done), then
the row says ``complete``; a run that finds an ``archiving`` row finishes it first.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from blindspot_assets.store.layout import VERSION_SEP, DataLayout, check_key
from blindspot_assets.store.rowstore import _fs_of, is_url, join_location
from blindspot_assets.store.tables import (
    list_tables,
    read_table,
    table_location,
    write_table_partition,
)

VERSIONS_TABLE = "model_versions"
PREVIOUS = "previous"
_SHORT = 12


def version_key(model: str, version: str) -> str:
    """``<model>@<first 12 alphanumerics of the version's last ':'-part>`` (``demo-a@3f2a…``)."""
    short = re.sub(r"[^A-Za-z0-9]", "", version.rsplit(":", 1)[-1])[:_SHORT] or "unknown"
    return f"{check_key(model)}{VERSION_SEP}{short}"


def model_of(key: str) -> str:
    """The model key of a dataset key (``demo-a@3f2a…`` → ``demo-a``; a model key as it is)."""
    return key.split(VERSION_SEP, 1)[0]


def is_version_key(key: str) -> bool:
    return VERSION_SEP in key


def archive_layout(layout: DataLayout) -> DataLayout:
    """Where archived versions live: a layout rooted at ``<root>/versions``."""
    store = None if layout.store_root is None else join_location(layout.store_root, "versions")
    return DataLayout(root=layout.root / "versions", store_root=store)


def locate(layout: DataLayout, key: str) -> DataLayout:
    """The layout holding dataset ``key``: the archive for a version key, else ``layout``."""
    return archive_layout(layout) if is_version_key(key) else layout


@dataclass(frozen=True)
class ArchivedVersion:
    model: str
    key: str
    model_version: str
    archived_at: str
    status: str  # "archiving" until every output is moved, then "complete"
    moved: tuple[str, ...]


def archived_versions(layout: DataLayout, model: str) -> list[ArchivedVersion]:
    """The archived versions of ``model``, oldest first."""
    try:
        df = read_table(layout.tables, VERSIONS_TABLE, check_key(model))
    except FileNotFoundError:
        return []
    return [
        ArchivedVersion(
            model=r["model_key"],
            key=r["version_key"],
            model_version=r["model_version"],
            archived_at=r["archived_at"],
            status=r["status"],
            moved=tuple(r["moved"] or ()),
        )
        for r in df.sort("archived_at").iter_rows(named=True)
    ]


def resolve_key(layout: DataLayout, key: str) -> str:
    """``<model>@previous`` → the key of the model's latest complete archived version."""
    model, _, which = key.partition(VERSION_SEP)
    if which != PREVIOUS:
        return key
    done = [v for v in archived_versions(layout, model) if v.status == "complete"]
    if not done:
        raise FileNotFoundError(
            f"{model} has no archived version: a model's outputs are archived when its "
            "checkpoint version changes and generated_images is materialised again"
        )
    return done[-1].key


def version_comparisons(layout: DataLayout, models: Iterable[str]) -> list[tuple[str, str]]:
    """``(<model>@<latest archived version>, <model>)`` for each model that has one: every model
    is compared with the version it replaced (``blindspot_changes``, the gate)."""
    out = []
    for model in models:
        done = [v for v in archived_versions(layout, model) if v.status == "complete"]
        if done:
            out.append((done[-1].key, model))
    return out


def _write_versions(layout: DataLayout, model: str, entries: list[ArchivedVersion]) -> None:
    df = pl.DataFrame(
        {
            "model_key": [e.model for e in entries],
            "version_key": [e.key for e in entries],
            "model_version": [e.model_version for e in entries],
            "archived_at": [e.archived_at for e in entries],
            "status": [e.status for e in entries],
            "moved": [list(e.moved) for e in entries],
        },
        schema={
            "model_key": pl.String,
            "version_key": pl.String,
            "model_version": pl.String,
            "archived_at": pl.String,
            "status": pl.String,
            "moved": pl.List(pl.String),
        },
    )
    write_table_partition(layout.tables, VERSIONS_TABLE, model, df)


def _exists(loc: str | Path) -> bool:
    return _fs_of(str(loc), None).exists(str(loc)) if is_url(loc) else Path(loc).exists()


def _move(src: str | Path, dst: str | Path) -> bool:
    """Move a file or folder (local, or within one object store); False when nothing to move."""
    if not _exists(src):
        return False
    if _exists(dst):
        raise FileExistsError(f"cannot archive {src}: {dst} exists already")
    if is_url(src):
        _fs_of(str(src), None).mv(str(src), str(dst), recursive=True)
    else:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
    return True


def _entries(folder: str | Path) -> list[str]:
    """The names in a folder (local or object store); none when it does not exist."""
    if not _exists(folder):
        return []
    if is_url(folder):
        # detail=False: names on every backend (fsspec's default differs: memory:// gives dicts)
        names = _fs_of(str(folder), None).ls(str(folder), detail=False)
        return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in names]
    return [p.name for p in Path(folder).iterdir()]


def _move_outputs(layout: DataLayout, model: str, key: str) -> list[str]:
    arch = archive_layout(layout)
    pairs: list[tuple[str, str | Path, str | Path]] = [
        ("images", layout.generated_images(model), arch.generated_images(key)),
        ("features", layout.features(model), arch.features(key)),
        ("codes", layout.codes(model), arch.codes(key)),
        ("verification_images", layout.verification_images(model), arch.verification_images(key)),
    ]
    for kind in ("features", "codes"):
        pairs.append(
            (
                f"verification_{kind}",
                layout.verification_store(model, kind),
                arch.verification_store(key, kind),
            )
        )
    for table in list_tables(layout.tables):
        if table == VERSIONS_TABLE:
            continue
        src_dir, dst_dir = table_location(layout.tables, table), table_location(arch.tables, table)
        renames = [(f"{model}.parquet", f"{key}.parquet"), (model, key)]
        # comparisons with this version as the candidate (blindspot_changes' base..candidate)
        renames += [
            (n, n) for n in _entries(src_dir) if n.removesuffix(".parquet").endswith(f"..{model}")
        ]
        for src_name, dst_name in renames:
            src, dst = join_location(src_dir, src_name), join_location(dst_dir, dst_name)
            pairs.append((f"table:{table}", src, dst))
    moved = []
    for what, src, dst in pairs:
        if _move(src, dst):
            moved.append(what)
    return moved


def archive_model_version(layout: DataLayout, model: str, version: str) -> ArchivedVersion:
    """Move ``model``'s outputs (made by ``version``) into the version archive."""
    key = version_key(model, version)
    entries = archived_versions(layout, model)
    if any(e.key == key for e in entries):
        # the same version archived before (a model switched back and forth): keep both
        key = f"{key}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d%H%M%S')}"
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    entry = ArchivedVersion(model, key, version, now, "archiving", ())
    _write_versions(layout, model, [*entries, entry])  # first: a crash leaves a record
    return _complete(layout, entry)


def _complete(layout: DataLayout, entry: ArchivedVersion) -> ArchivedVersion:
    """Move what is left to move for ``entry``, then mark it complete (idempotent)."""
    moved = tuple(sorted({*entry.moved, *_move_outputs(layout, entry.model, entry.key)}))
    done = ArchivedVersion(
        entry.model, entry.key, entry.model_version, entry.archived_at, "complete", moved
    )
    entries = archived_versions(layout, entry.model)
    _write_versions(layout, entry.model, [done if e.key == entry.key else e for e in entries])
    return done


def finish_pending(layout: DataLayout, model: str) -> list[ArchivedVersion]:
    """Complete archives a crashed run left ``archiving``."""
    return [
        _complete(layout, e) for e in archived_versions(layout, model) if e.status == "archiving"
    ]


def archive_if_replaced(
    layout: DataLayout, model: str, made_by: str | None, current: str
) -> ArchivedVersion | None:
    """Archive ``model``'s outputs when they were made by another version than ``current``.

    ``made_by`` is the version recorded with the generated images (None or "unknown" when
    there are none, or nothing records it: nothing is moved then).
    """
    finish_pending(layout, model)
    if not made_by or made_by == "unknown" or made_by == current:
        return None
    return archive_model_version(layout, model, made_by)


__all__ = [
    "PREVIOUS",
    "VERSIONS_TABLE",
    "ArchivedVersion",
    "archive_if_replaced",
    "archive_layout",
    "archive_model_version",
    "archived_versions",
    "finish_pending",
    "is_version_key",
    "locate",
    "model_of",
    "resolve_key",
    "version_comparisons",
    "version_key",
]

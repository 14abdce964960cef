"""The version archive: a model's outputs move under ``<model>@<version>`` when its checkpoint
version changes, stay readable through the same layout calls, and a crashed archive resumes."""

import re
from pathlib import Path

import fsspec  # type: ignore[import-untyped]
import polars as pl
import pytest

from blindspot_assets.store import versions
from blindspot_assets.store.images import write_lineage
from blindspot_assets.store.layout import DataLayout, check_key
from blindspot_assets.store.tables import read_table, write_table_partition


def _outputs(layout: DataLayout, model: str, version: str, value: float) -> None:
    images = layout.generated_images(model)
    write_lineage(images, {"resolved_version": version})
    (images / "0.png").write_bytes(b"png of " + version.encode())
    for store in (layout.features(model), layout.codes(model)):
        Path(store).mkdir(parents=True)
        (Path(store) / "zarr.json").write_text(version)
    stats = pl.DataFrame({"model_key": [model], "concept": [0], "delta_energy": [value]})
    write_table_partition(layout.tables, "concept_stats", model, stats)


def test_archive_moves_every_output_and_keeps_it_readable(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    _outputs(layout, "m", "v1", -1.0)
    _outputs(layout, "other", "x", 2.0)
    assert versions.archive_if_replaced(layout, "m", "v1", "v1") is None  # same version
    done = versions.archive_if_replaced(layout, "m", "v1", "v2")
    assert done is not None and done.key == "m@v1" and done.status == "complete"
    assert {"images", "features", "codes", "table:concept_stats"} <= set(done.moved)
    # the current model has nothing left; the other model is untouched
    assert not layout.generated_images("m").exists() and not Path(layout.codes("m")).exists()
    assert read_table(layout.tables, "concept_stats")["model_key"].to_list() == ["other"]
    # the archived version reads through the same layout calls, from the archive
    arch = versions.locate(layout, "m@v1")
    assert (arch.generated_images("m@v1") / "0.png").read_bytes() == b"png of v1"
    assert Path(arch.codes("m@v1"), "zarr.json").read_text() == "v1"
    assert read_table(arch.tables, "concept_stats", "m@v1")["delta_energy"].to_list() == [-1.0]
    assert versions.resolve_key(layout, "m@previous") == "m@v1"
    assert versions.resolve_key(layout, "m") == "m"


def test_versions_listed_in_order_and_previous_is_latest(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    for old, new in (("v1", "v2"), ("v2", "v3")):
        _outputs(layout, "m", old, 0.0)
        versions.archive_if_replaced(layout, "m", old, new)
    listed = versions.archived_versions(layout, "m")
    assert [v.key for v in listed] == ["m@v1", "m@v2"]
    assert versions.resolve_key(layout, "m@previous") == "m@v2"
    # a model switched back to an archived version: both archives kept, under distinct keys
    _outputs(layout, "m", "v1", 0.0)
    again = versions.archive_if_replaced(layout, "m", "v1", "v4")
    assert again is not None and again.key.startswith("m@v1-") and again.status == "complete"
    assert len(versions.archived_versions(layout, "m")) == 3


def test_crashed_archive_is_finished_by_the_next_run(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    _outputs(layout, "m", "v1", 0.0)
    entry = versions.ArchivedVersion("m", "m@v1", "v1", "2026-01-01T00:00:00", "archiving", ())
    versions._write_versions(layout, "m", [entry])
    arch = versions.archive_layout(layout)
    versions._move(layout.generated_images("m"), arch.generated_images("m@v1"))  # then: crash
    # the next run's check finds the model "empty" but the pending archive is finished first
    assert versions.archive_if_replaced(layout, "m", None, "v2") is None
    (done,) = versions.archived_versions(layout, "m")
    assert done.status == "complete" and {"codes", "features"} <= set(done.moved)
    assert not Path(layout.features("m")).exists() and Path(arch.features("m@v1")).exists()


def test_previous_never_names_a_half_moved_archive(tmp_path: Path) -> None:
    """A newer archive still ``archiving`` (a crash mid-move) is not ``@previous``, nor a base
    to compare with: the latest complete one is; with none complete there is no previous."""
    layout = DataLayout(tmp_path)
    done = versions.ArchivedVersion("m", "m@v1", "v1", "2026-01-01T00:00:00", "complete", ())
    half = versions.ArchivedVersion("m", "m@v2", "v2", "2026-02-01T00:00:00", "archiving", ())
    versions._write_versions(layout, "m", [done, half])
    assert versions.resolve_key(layout, "m@previous") == "m@v1"
    assert versions.version_comparisons(layout, ["m"]) == [("m@v1", "m")]
    versions._write_versions(layout, "m", [half])
    with pytest.raises(FileNotFoundError, match="no archived version"):
        versions.resolve_key(layout, "m@previous")
    assert versions.version_comparisons(layout, ["m"]) == []


def test_keys_and_errors() -> None:
    assert versions.version_key("sd15", "combined:0123456789abcdef") == "sd15@0123456789ab"
    assert versions.model_of("sd15@0123") == "sd15" and versions.model_of("sd15") == "sd15"
    with pytest.raises(ValueError, match="must match"):
        check_key("sd15@v1")  # a model key never holds '@': versions cannot collide with models
    with pytest.raises(FileNotFoundError, match="no archived version"):
        versions.resolve_key(DataLayout(Path("/nonexistent")), "m@previous")


def test_an_archive_in_an_object_store_moves_the_same_outputs(tmp_path: Path) -> None:
    """store_root an fsspec URL (memory://, as s3:// in production): stores and table
    partitions move within the store, comparisons with the model as candidate go along."""
    fs = fsspec.filesystem("memory")
    root = f"memory://{tmp_path.name}"
    layout = DataLayout(tmp_path, store_root=root)
    for store in (layout.features("m"), layout.codes("m"), layout.verification_store("m", "codes")):
        fs.pipe(f"{store}/zarr.json", b"v1")
    row = pl.DataFrame({"concept": [0]})
    for table, partition in [("concept_stats", "m"), ("changes", "x..m"), ("changes", "m..x")]:
        write_table_partition(layout.tables, table, partition, row)
    done = versions.archive_if_replaced(layout, "m", "v1", "v2")
    assert done is not None and done.moved == (
        "codes", "features", "table:changes", "table:concept_stats", "verification_codes"
    )  # fmt: skip
    arch = versions.archive_layout(layout)
    assert arch.root == tmp_path / "versions" and arch.store_root == f"{root}/versions"
    assert fs.cat(f"{root}/versions/codes/m@v1.zarr/zarr.json") == b"v1"
    assert not fs.exists(f"{root}/codes/m.zarr") and not fs.exists(f"{root}/features/m.zarr")
    assert versions._entries(f"{root}/tables/changes") == ["m..x.parquet"]
    assert sorted(versions._entries(f"{root}/versions/tables/changes")) == ["x..m.parquet"]
    assert versions._entries(f"{root}/nothing") == []
    fs.pipe(f"{root}/codes/m.zarr/zarr.json", b"v2")
    with pytest.raises(FileExistsError, match=r"cannot archive memory://.*: .* exists already"):
        versions._move(f"{root}/codes/m.zarr", f"{root}/versions/codes/m@v1.zarr")
    assert versions._move(f"{root}/none", f"{root}/other") is False


def test_a_local_archive_moves_verification_and_comparisons(tmp_path: Path) -> None:
    layout = DataLayout(tmp_path)
    images = layout.verification_images("m")
    images.mkdir(parents=True)
    Path(layout.verification_store("m", "features")).mkdir(parents=True)
    row = pl.DataFrame({"concept": [0]})
    for partition in ("x..m", "m..x", "m"):
        write_table_partition(layout.tables, "changes", partition, row)
    write_table_partition(layout.tables, "top_images", "m", row)  # listed after model_versions
    assert versions.archive_layout(layout) == DataLayout(tmp_path / "versions")
    done = versions.archive_model_version(layout, "m", "hub:rev-1")
    assert done.key == "m@rev1" and done.moved == (
        "table:changes", "table:top_images", "verification_features", "verification_images"
    )  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", done.archived_at)
    arch = versions.archive_layout(layout)
    assert sorted(versions._entries(arch.tables / "changes")) == ["m@rev1.parquet", "x..m.parquet"]
    assert versions._entries(layout.tables / "changes") == ["m..x.parquet"]
    assert arch.verification_images("m@rev1").is_dir() and not images.exists()
    assert versions.archived_versions(layout, "m") == [done]
    # the same version again: a second archive under a timestamped key, the first kept
    again = versions.archive_model_version(layout, "m", "hub:rev-1")
    assert re.fullmatch(r"m@rev1-\d{14}", again.key) and again.moved == ()
    assert [v.key for v in versions.archived_versions(layout, "m")] == ["m@rev1", again.key]


def test_version_keys_and_what_archive_if_replaced_leaves_alone(tmp_path: Path) -> None:
    assert versions.version_key("m", "a:b:c-d_e") == "m@cde"
    assert versions.version_key("m", "x:" + "ab-" * 8) == "m@abababababab"
    assert versions.version_key("m", "x:--") == "m@unknown"
    assert versions.version_key("m", "plain") == "m@plain"
    assert versions.is_version_key("m@v") and not versions.is_version_key("m")
    assert versions.locate(DataLayout(tmp_path), "m@v").root == tmp_path / "versions"
    assert versions.locate(DataLayout(tmp_path), "m").root == tmp_path
    layout = DataLayout(tmp_path)
    _outputs(layout, "m", "v1", 0.0)
    for made_by in (None, "", "unknown", "v2"):
        assert versions.archive_if_replaced(layout, "m", made_by, "v2") is None
    assert versions.archived_versions(layout, "m") == []
    assert versions.finish_pending(layout, "m") == []
    pending = versions.ArchivedVersion("m", "m@v1", "v1", "2026-01-01T00:00:00", "archiving", ())
    versions._write_versions(layout, "m", [pending])
    (done,) = versions.finish_pending(layout, "m")
    assert done.key == "m@v1" and done.status == "complete" and "images" in done.moved
    assert versions.archived_versions(layout, "m") == [done]

"""img2dataset outputs (files and webdataset layouts) and plain folders (sidecars, manifests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.sources import folder as folder_source
from blindspot_assets.sources import img2dataset as i2d_source
from blindspot_assets.sources.intake import content_id
from tests.sources.i2d_layout import write_output
from tests.sources.loopback import image_bytes

GOOD = [image_bytes("JPEG", seed=i) for i in range(3)]


def _i2d_rows() -> list[dict[str, object]]:
    return [
        {"key": "0000000", "url": "http://h/0.jpg", "caption": "a cat", "image": GOOD[0]},
        {"key": "0000001", "url": "http://h/1.jpg", "caption": "a dog", "image": GOOD[1]},
        {"key": "0000002", "url": "http://h/2.jpg", "caption": "", "image": GOOD[2]},
        {"key": "0000003", "url": "http://h/3.jpg", "caption": "cut", "image": GOOD[0][:700]},
        {
            "key": "0000004",
            "url": "http://h/4.jpg",
            "caption": "x",
            "error_message": "HTTP Error 404: Not Found",
        },
        {"key": "0000005", "url": "http://h/5.jpg", "caption": "y", "error_message": "timed out"},
        {
            "key": "0000006",
            "url": "http://h/6.jpg",
            "caption": "z",
            "error_message": "<urlopen error [Errno 111] Connection refused>",
        },
    ]


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_img2dataset_layouts(tmp_path: Path, layout: str) -> None:
    src = write_output(tmp_path / "i2d", layout, _i2d_rows())
    spec = SourceSpec("img2dataset", {"path": str(src)})
    out = tmp_path / "real"
    df = i2d_source.fetch(spec, out, seed=0)
    assert Counter(df["status"]) == {
        "ok": 2,
        "empty_caption": 1,
        "decode_error": 1,
        "http_404": 1,
        "timeout": 1,
        "connection_error": 1,
    }
    ok = df.filter(pl.col("status") == "ok").sort("image_id")
    assert ok["image_id"].to_list() == ["0000000", "0000001"]
    assert ok["caption"].to_list() == ["a cat", "a dog"]
    assert ok["url"].to_list() == ["http://h/0.jpg", "http://h/1.jpg"]
    for path in ok["path"]:
        assert (out / path).is_file()
    if layout == "webdataset":  # unpacked into the set folder, once
        assert all(not Path(p).is_absolute() for p in ok["path"])
        stamp = (out / ok["path"][0]).stat().st_mtime_ns
        assert i2d_source.fetch(spec, out, seed=0).equals(df)
        assert (out / ok["path"][0]).stat().st_mtime_ns == stamp
    by_content = i2d_source.fetch(
        SourceSpec("img2dataset", {"path": str(src), "ids": "content", "copy": True}),
        tmp_path / "copied",
        seed=0,
    )
    ok_content = by_content.filter(pl.col("status") == "ok")
    assert set(ok_content["image_id"]) == {content_id(GOOD[0]), content_id(GOOD[1])}
    # copies are stored lossless: no second codec on the real side only
    assert all(p.endswith(".png") and not Path(p).is_absolute() for p in ok_content["path"])


def test_folder_with_sidecars(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "trip").mkdir(parents=True)
    (src / "a.jpg").write_bytes(GOOD[0])
    (src / "a.txt").write_text("a cat on a sofa\n")
    (src / "trip" / "b.jpg").write_bytes(GOOD[1])
    (src / "trip" / "b.txt").write_text("a dog")
    (src / "trip" / "b-again.jpg").write_bytes(GOOD[1])  # same bytes
    (src / "trip" / "b-again.txt").write_text("a dog again")
    (src / "no-caption.jpg").write_bytes(GOOD[2])
    (src / "broken.jpg").write_bytes(GOOD[2][:600])
    (src / "broken.txt").write_text("broken")
    (src / "notes.txt").write_text("not an image, not a sidecar of one")
    df = folder_source.fetch(SourceSpec("folder", {"path": str(src)}), tmp_path / "real", 0)
    assert Counter(df["status"]) == {"ok": 2, "duplicate": 1, "empty_caption": 1, "decode_error": 1}
    ok = df.filter(pl.col("status") == "ok")
    assert set(ok["image_id"]) == {content_id(GOOD[0]), content_id(GOOD[1])}
    assert dict(zip(ok["image_id"], ok["caption"], strict=True))[content_id(GOOD[0])] == (
        "a cat on a sofa"
    )
    assert all(Path(p).is_file() for p in ok["path"])  # where they are (copy: false)


def test_folder_with_manifest(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    (src / "one.jpg").write_bytes(GOOD[0])
    (src / "two.jpg").write_bytes(GOOD[1])
    pl.DataFrame(
        {
            "path": ["one.jpg", "two.jpg", "gone.jpg"],
            "caption": ["first", "second", "third"],
            "image_id": ["i1", "i2", "i3"],
        }
    ).write_parquet(src / "captions.parquet")
    spec = SourceSpec(
        "folder",
        {"path": str(src), "manifest": "captions.parquet", "copy": True, "max_short_side": 40},
    )
    out = tmp_path / "real"
    df = folder_source.fetch(spec, out, 0)
    assert dict(zip(df["image_id"], df["status"], strict=True)) == {
        "i1": "ok",
        "i2": "ok",
        "i3": "missing_file",
    }
    from PIL import Image

    with Image.open(out / df["path"][0]) as im:
        assert min(im.size) == 40  # normalised copy, shorter side 40
    (src / "captions.csv").write_text("path,caption\none.jpg,first\n")
    csv = folder_source.fetch(
        SourceSpec("folder", {"path": str(src), "manifest": "captions.csv"}), tmp_path / "r2", 0
    )
    assert csv["image_id"].to_list() == [content_id(GOOD[0])]


def test_bad_local_inputs_name_the_field_and_the_fix(tmp_path: Path) -> None:
    cases: list[tuple[SourceSpec, str]] = [
        (SourceSpec("folder", {"path": str(tmp_path / "none")}), r"real.path: folder .* fix:"),
        (SourceSpec("folder", {}), "real.path is required"),
        (
            SourceSpec("folder", {"path": str(tmp_path), "manifest": "m.csv"}),
            r"real.manifest: .*m.csv does not exist; fix",
        ),
        (SourceSpec("folder", {"path": str(tmp_path), "colour": 1}), "real.colour: not a field"),
        (
            SourceSpec("img2dataset", {"path": str(tmp_path)}),
            r"neither shard folders .* fix: point it at img2dataset's output_folder",
        ),
        (SourceSpec("img2dataset", {"path": str(tmp_path), "layout": "zip"}), "real.layout"),
    ]
    for spec, pattern in cases:
        module = folder_source if spec.kind == "folder" else i2d_source
        with pytest.raises(ConfigError, match=pattern):
            module.validate(spec)
    (tmp_path / "m.csv").write_text("file,text\na.jpg,cat\n")
    with pytest.raises(ConfigError, match=r"has no 'path' column .* fix: add a 'path' column"):
        folder_source.fetch(
            SourceSpec("folder", {"path": str(tmp_path), "manifest": "m.csv"}), tmp_path / "o", 0
        )
    with pytest.raises(ConfigError, match="real.path: no images found"):
        folder_source.fetch(SourceSpec("folder", {"path": str(tmp_path)}), tmp_path / "o", 0)

"""LAION-style parquet → seeded sample → downloads from a loopback server, with every failure
reason counted exactly, resume without re-download, and a deterministic top-up."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blindspot_assets.config import ConfigError, SourceSpec
from blindspot_assets.sources import laion_parquet
from blindspot_assets.sources.download import img2dataset_command
from blindspot_assets.sources.registry import source_module
from blindspot_assets.store.images import read_manifest
from tests.sources.loopback import default_routes, image_bytes, serve

pytestmark = pytest.mark.timeout(120)  # a download loop that never ends fails, not hangs

CHECKS = {"min_side": 32, "max_pixels": 1_000_000, "max_short_side": 64, "timeout_s": 0.5}
EXPECTED = {
    "ok": 5,
    "duplicate": 1,
    "http_404": 1,
    "http_500": 1,
    "timeout": 1,
    "decode_error": 1,
    "not_an_image": 1,
    "too_large": 1,
    "too_small": 1,
    "empty_caption": 1,
    "bad_url": 1,
    "connection_error": 1,
}


def _rows(base: str) -> list[dict[str, str]]:
    paths = [
        "/a.jpg",
        "/b.png",
        "/c.webp",
        "/d.jpg",
        "/e.jpg",
        "/a-copy.jpg",
        "/missing.jpg",
        "/broken.jpg",
        "/stall.jpg",
        "/truncated.jpg",
        "/page.html",
        "/huge.png",
        "/tiny.png",
    ]
    rows = [{"url": base + p, "caption": f"a photo {p[1:]}", "similarity": 0.3} for p in paths]
    rows += [
        {"url": base + "/never.jpg", "caption": "  ", "similarity": 0.3},
        {"url": "ftp://example.invalid/x.jpg", "caption": "ftp", "similarity": 0.3},
        {"url": "http://127.0.0.1:1/refused.jpg", "caption": "refused", "similarity": 0.3},
        {"url": base + "/b.png", "caption": "the same URL again", "similarity": 0.3},
    ]
    return rows


def _write_parquets(folder: Path, rows: list[dict[str, object]]) -> None:
    """Two files, row groups of 3 rows: the sample reads across files and row groups."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"part-{i}.parquet", row_group_size=3)


def _spec(folder: Path, **params: object) -> SourceSpec:
    return SourceSpec(
        "laion_parquet", {"parquet": str(folder / "*.parquet"), "workers": 4, **CHECKS, **params}
    )


def _counts(df: pl.DataFrame) -> dict[str, int]:
    return dict(Counter(df["status"].to_list()))


def test_every_reason_counted_and_a_second_run_fetches_nothing(tmp_path: Path) -> None:
    routes = default_routes()
    with serve(routes) as base:
        _write_parquets(tmp_path / "meta", _rows(base))
        spec = _spec(tmp_path / "meta", n_images=10, max_candidates=100)
        out = tmp_path / "real"
        module = source_module(spec)
        module.validate(spec)
        df = module.fetch(spec, out, seed=3)
        assert _counts(df) == EXPECTED
        assert df.height == 16  # the repeated URL is taken once
        ok = df.filter(pl.col("status") == "ok")
        assert ok["image_id"].str.len_chars().to_list() == [16] * 5
        for row in ok.iter_rows(named=True):
            stored = out / row["path"]
            assert stored.is_file() and min(row["width"], row["height"]) <= 64
        assert not any(routes.hits[p] for p in ("/never.jpg",))  # empty caption: not fetched
        hits = Counter(routes.hits)

        again = module.fetch(spec, out, seed=3)
        assert routes.hits == hits  # nothing fetched again
        assert again.equals(df)
        assert read_manifest(out).equals(df)

        # An image lost from disk is fetched again, alone; a half-written log line is ignored.
        lost = ok.row(0, named=True)
        (out / lost["path"]).unlink()
        with open(out / laion_parquet.LOG, "a") as fh:
            fh.write('{"url": "half a li')
        third = module.fetch(spec, out, seed=3)
        assert sum(routes.hits.values()) == sum(hits.values()) + 1
        assert _counts(third) == EXPECTED and (out / lost["path"]).is_file()


def test_top_up_reaches_the_same_set_as_one_run(tmp_path: Path) -> None:
    routes = default_routes()
    with serve(routes) as base:
        _write_parquets(tmp_path / "meta", _rows(base))
        small = laion_parquet.fetch(
            _spec(tmp_path / "meta", n_images=2, max_candidates=100), tmp_path / "a", seed=11
        )
        assert _counts(small)["ok"] == 2
        first_ids = set(small.filter(pl.col("status") == "ok")["image_id"])
        fetched_once = Counter(routes.hits)
        topped = laion_parquet.fetch(
            _spec(tmp_path / "meta", n_images=4, max_candidates=100), tmp_path / "a", seed=11
        )
        for url, n in fetched_once.items():
            assert routes.hits[url] == n, f"{url} fetched again"
        fresh = laion_parquet.fetch(
            _spec(tmp_path / "meta", n_images=4, max_candidates=100), tmp_path / "b", seed=11
        )
    topped_ok = topped.filter(pl.col("status") == "ok")
    assert topped_ok.height == 4 and first_ids <= set(topped_ok["image_id"])
    assert topped.drop("path").equals(fresh.drop("path"))


def test_sample_is_seeded_and_takes_each_row_once(tmp_path: Path) -> None:
    rows = [{"url": f"http://h/{i}.jpg", "caption": f"c{i}"} for i in range(50)]
    _write_parquets(tmp_path / "meta", rows)  # type: ignore[arg-type]
    spec = _spec(tmp_path / "meta", n_images=10, max_candidates=50)
    everything = laion_parquet.candidates(spec, tmp_path / "x", seed=5)
    assert sorted(everything["url"]) == sorted(r["url"] for r in rows)  # each row exactly once
    again = laion_parquet.candidates(spec, tmp_path / "y", seed=5)
    assert everything.equals(again)
    other = laion_parquet.candidates(spec, tmp_path / "z", seed=6)
    assert other["url"].to_list() != everything["url"].to_list()
    part = laion_parquet.candidates(
        _spec(tmp_path / "meta", n_images=5, max_candidates=7), tmp_path / "w", seed=5
    )
    assert part.height == 7
    for rec in part.iter_rows(named=True):  # the row's url and caption come from the same row
        assert rec["caption"] == "c" + rec["url"].split("/")[-1].removesuffix(".jpg")


def test_bad_inputs_name_the_field_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "meta"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["http://h/1.jpg"], "TEXT": ["a cat"]}), folder / "p.parquet")
    with pytest.raises(
        ConfigError,
        match=r"real.caption_col: p.parquet has no column 'caption'.*fix: set real.caption_col",
    ):
        laion_parquet.validate(_spec(folder))
    laion_parquet.validate(_spec(folder, caption_col="TEXT"))
    with pytest.raises(
        ConfigError, match=r"real.parquet: .*nothing\*.parquet matches no file; fix"
    ):
        laion_parquet.validate(
            SourceSpec("laion_parquet", {"parquet": str(tmp_path / "nothing*.parquet")})
        )
    with pytest.raises(ConfigError, match="real.n_images"):
        laion_parquet.validate(_spec(folder, caption_col="TEXT", n_images=0))
    with pytest.raises(ConfigError, match="real.colour: not a field"):
        laion_parquet.validate(_spec(folder, caption_col="TEXT", colour="red"))
    with pytest.raises(ConfigError, match="real.downloader"):
        laion_parquet.validate(_spec(folder, caption_col="TEXT", downloader="wget"))


def test_img2dataset_downloader_gives_the_same_reasons(tmp_path: Path) -> None:
    """Runs img2dataset from its own venv (tests/sources/ensure_img2dataset.sh, which ./run test
    calls and exports as $BLINDSPOT_IMG2DATASET)."""
    assert img2dataset_command() is not None, (
        "img2dataset is missing: run `export BLINDSPOT_IMG2DATASET=$(bash "
        "tests/sources/ensure_img2dataset.sh)`"
    )
    routes = default_routes()
    with serve(routes) as base:
        _write_parquets(tmp_path / "meta", _rows(base))
        spec = _spec(
            tmp_path / "meta",
            n_images=10,
            max_candidates=100,
            downloader="img2dataset",
            timeout_s=1,
        )
        df = laion_parquet.fetch(spec, tmp_path / "real", seed=3)
        assert _counts(df) == EXPECTED
        hits = Counter(routes.hits)
        laion_parquet.fetch(spec, tmp_path / "real", seed=3)
        assert routes.hits == hits


def test_transient_failures_are_retried_only_when_asked(tmp_path: Path) -> None:
    routes = default_routes()
    with serve(routes) as base:
        _write_parquets(tmp_path / "meta", _rows(base))
        spec = _spec(tmp_path / "meta", n_images=10, max_candidates=100)
        laion_parquet.fetch(spec, tmp_path / "real", seed=3)
        routes.bodies["/broken.jpg"] = (200, "image/png", image_bytes("PNG", seed=9))  # back up
        kept = laion_parquet.fetch(spec, tmp_path / "real", seed=3)
        assert routes.hits["/broken.jpg"] == 1 and _counts(kept)["http_500"] == 1
        retried = laion_parquet.fetch(
            _spec(tmp_path / "meta", n_images=10, max_candidates=100, retry_transient=True),
            tmp_path / "real",
            seed=3,
        )
    assert routes.hits["/broken.jpg"] == 2 and routes.hits["/stall.jpg"] == 2
    assert "http_500" not in _counts(retried) and _counts(retried)["ok"] == 6

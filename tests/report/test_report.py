"""The HTML report as a library: figures, token heat maps, tables read by schema, the page."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from blindspot_assets.report import ReportOptions, build_report, svg
from blindspot_assets.report.data import Labels, load_table
from blindspot_assets.report.images import concept_maps, overlay_heat, safe_name
from blindspot_assets.report.preview import thumbnail_grid_md
from blindspot_assets.store.layout import TokenLayout, code_arrays
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.schema import TABLE_SCHEMAS
from blindspot_assets.store.tables import list_tables, read_table, write_table_partition
from tests.report.synthetic_run import EXAGGERATED, SUPPRESSED, build_run


class _Page(HTMLParser):
    """Collects image sources, element ids and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.srcs.append(str(a["src"]))
        if a.get("id"):
            self.ids.add(str(a["id"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _svgs(html_text: str) -> list[str]:
    return re.findall(r"<svg .*?</svg>", html_text, flags=re.S)


# -- figures ----------------------------------------------------------------------------------
def test_svg_figures_are_well_formed_and_bounded():
    rng = np.random.default_rng(0)
    many = rng.lognormal(size=40_000)
    figures = [
        svg.histogram_svg(rng.random(500), title="δ <&>", xlabel="δ", value_range=(0, 1),
                          markers={0.1: "suppressed", 0.9: "exaggerated"}),
        svg.histogram_svg([], title="empty", xlabel="x"),
        svg.scatter_svg(many, many * rng.lognormal(size=many.size), title="big", xlabel="a",
                        ylabel="b", log_x=True, log_y=True, diagonal=True,
                        highlight=[svg.ScatterPoint(1.0, 0.0, svg.SUPPRESSED, "c 1 <x>", True)]),
        svg.scatter_svg([0.0, np.nan, 1.0], [1.0, 2.0, np.inf], title="odd", xlabel="a",
                        ylabel="b", log_x=True),
        svg.matrix_svg(["a", "b<"], [[1.0, np.nan], [np.nan, 1.0]], title="m"),
        svg.step_histograms_svg({"x": rng.random(50), "y": []}, title="s", xlabel="l2"),
        svg.lines_svg({"m": ([0.01, 0.1, 1.0], [0.2, -0.1, 0.0])}, title="l", xlabel="f",
                      ylabel="r", log_x=True),
    ]  # fmt: skip
    for fig in figures:
        root = ET.fromstring(fig)  # well-formed XML, text escaped
        assert root.tag.endswith("svg")
    # 40k background points become a density grid: the figure stays small.
    assert len(figures[2]) < 400_000
    assert "c 1 &lt;x&gt;" in figures[2]


def test_number_format():
    assert svg.fmt(None) == svg.fmt(float("nan")) == "–"
    assert svg.fmt(0.000012) == "1.20e-05"
    assert svg.fmt(3) == "3" and svg.fmt(True) == "yes" and svg.fmt(0.12345) == "0.123"


# -- token heat maps ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_tokens", "attrs", "registers", "grid"),
    [(261, None, 4, 16), (69, None, 4, 8), (257, None, 0, 16), (257, {"n_registers": 0}, 0, 16),
     (37, {"num_register_tokens": 0}, 0, 6)],
)  # fmt: skip
def test_token_layout(n_tokens, attrs, registers, grid):
    layout = TokenLayout.infer(n_tokens, attrs)
    assert (layout.n_registers, layout.grid) == (registers, grid)
    assert layout.first_patch + grid * grid == n_tokens


def test_concept_maps_sum_token_codes_over_patches(tmp_path):
    n_tokens, k_max = 1 + 4 + 4, 2  # CLS, 4 registers, a 2×2 grid
    store = RowStore.create_or_resume(
        tmp_path / "codes.zarr", ["a", "b", "c"], code_arrays(n_tokens, 10, k_max),
        {"fingerprint": "t"}, chunk_rows=2,
    )  # fmt: skip
    idx = np.full((3, n_tokens, k_max), -1, np.int32)
    val = np.zeros((3, n_tokens, k_max), np.float16)
    idx[0, 0] = [7, -1]  # CLS token: never drawn
    val[0, 0] = [9.0, 0]
    idx[0, 5] = [7, 3]  # first patch: concept 7 = 1.5, concept 3 = 0.5
    val[0, 5] = [1.5, 0.5]
    idx[0, 8] = [3, 7]  # last patch: concept 7 = 0.25
    val[0, 8] = [2.0, 0.25]
    xi = np.zeros((3, 10), np.float32)
    zeros = np.zeros((3, 10), np.uint16)
    store.write_block(0, {"token_idx": idx[:2], "token_val": val[:2], "xi": xi[:2],
                          "nfire": zeros[:2]}, np.array([True, True]), ["ok", "ok"])  # fmt: skip
    store.write_block(2, {"token_idx": idx[2:], "token_val": val[2:], "xi": xi[2:],
                          "nfire": zeros[2:]}, np.array([False]), ["decode_error"])  # fmt: skip
    maps = concept_maps(tmp_path / "codes.zarr", {"a": [7, 3], "c": [7], "zzz": [1]})
    np.testing.assert_allclose(maps[("a", 7)], [[1.5, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(maps[("a", 3)], [[0.5, 0.0], [0.0, 2.0]])
    assert ("c", 7) not in maps and ("zzz", 1) not in maps  # invalid row, unknown image


def test_thumbnail_grid_md(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (200, 100), (i * 80, 0, 0)).save(paths[-1])
    md = thumbnail_grid_md([*paths, tmp_path / "missing.png"], ["a", "b|c", "d", "e"], per_row=2)
    lines = md.splitlines()
    assert len(lines) == 4 and md.count("data:image/jpeg;base64,") == 3 and "b/c" in md
    assert thumbnail_grid_md([]) == "_(no images)_"


def test_overlay_and_names():
    base = np.full((32, 32, 3), 200, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 2.0
    out = overlay_heat(base, heat, vmax=2.0)
    assert out.shape == base.shape and out.dtype == np.uint8
    assert out[0, 0].tolist() != out[31, 31].tolist()  # hot corner differs from the cold one
    assert safe_name("demo-000001") == "demo-000001"
    assert "/" not in safe_name("a/b c") and safe_name("a/b c") != safe_name("a_b_c")


# -- tables read by schema --------------------------------------------------------------------
def test_labels_are_the_best_ranked_terms():
    terms = ["red", "two red", "red", "sky"]
    df = pl.DataFrame({"concept": [1, 1, 1, 2], "rank": [2, 1, 3, 1], "term": terms,
                       "score": [0.5, 0.9, 0.4, None]})  # fmt: skip
    labels = Labels.from_table(df)
    assert labels.name(1) == "two red · red" and labels.short(2) == "sky" and labels.name(9) == ""
    assert labels.terms[1] == [("two red", 0.9), ("red", 0.5)]
    assert labels.terms[2] == [("sky", None)]


def test_a_table_is_read_in_its_schema_columns(tmp_path):
    """A column the schema does not name is not seen; one it names that the partition lacks
    (written before the column existed) reads as null."""
    df = pl.DataFrame({"concept": [0, 1], "x": [0.5, 1.5], "y": [2.0, 3.0], "z_extra": [1, 2]})
    write_table_partition(tmp_path, "concept_map", "all", df)
    got = load_table(tmp_path, "concept_map")
    assert got is not None and got.columns == list(TABLE_SCHEMAS["concept_map"])
    assert got["x"].to_list() == [0.5, 1.5] and got["method"].to_list() == [None, None]
    assert load_table(tmp_path, "concept_names") is None  # not materialised


@pytest.mark.parametrize(
    ("table", "column"),
    [("datapoint_deltas", "l2"), ("memorization_candidates", "nearest_real_id"),
     ("model_summaries", "delta_skewness"), ("blindspots", "change_lcb")],
)  # fmt: skip
def test_a_column_the_schema_does_not_define_cannot_be_read(
    library_run, tmp_path, monkeypatch, table, column
):
    """The report reads named columns of the schemas: with one taken out of its table's
    schema, building the report fails on that name instead of guessing another."""
    schema = tuple(c for c in TABLE_SCHEMAS[table] if c != column)
    monkeypatch.setitem(TABLE_SCHEMAS, table, schema)
    with pytest.raises((pl.exceptions.ColumnNotFoundError, KeyError), match=column):
        build_report(library_run, tmp_path / "report")


# -- the page ----------------------------------------------------------------------------------
def _check_page(summary, out_dir: Path) -> _Page:
    page = _parse(summary.path)
    assert summary.path == out_dir / "index.html"
    for src in page.srcs:
        assert not src.startswith(("/", "file:", "http")), src  # relative: the folder travels
        assert (out_dir / src).is_file(), src
    for fig in _svgs(summary.path.read_text(encoding="utf-8")):
        ET.fromstring(fig)
    return page


@pytest.fixture(scope="module")
def library_run(tmp_path_factory):
    """One run with every table the statistics library writes, shared by this module."""
    return build_run(tmp_path_factory.mktemp("library"), tables="library")


def test_the_schemas_name_every_column_the_library_writes(library_run):
    root = library_run.layout.tables
    for table in list_tables(root):
        written = read_table(root, table).columns
        assert set(written) <= set(TABLE_SCHEMAS[table]), table


def test_report_from_library_tables(library_run, tmp_path):
    cfg = library_run
    out = tmp_path / "report"
    summary = build_report(cfg, out)
    page = _check_page(summary, out)
    text = " ".join(page.text)
    assert (
        summary.n_models == 2
        and summary.n_blindspots > 0
        and summary.n_images == len(list((out / "img").rglob("*.jpg")))
    )
    # The planted suppressed concept has a card on demo-a, named by its caption term.
    assert f"m-demo-a-c{SUPPRESSED}" in page.ids
    assert f"m-demo-a-c{EXAGGERATED}" in page.ids
    assert "red" in text and "Memorisation candidates" in text and "Lineage" in text
    assert "table model_correlations" in text and "frequency_vs_relative" in text
    # Heat maps of the suppressed concept: drawn on real images, none on demo-a's.
    heat_dir = out / "img" / "demo-a" / f"c{SUPPRESSED}"
    assert any(heat_dir.glob("*.jpg"))
    assert "demo-a · peak 0" in text
    # Lineage: encoder attrs, planted truth of the generators, table stamps.
    assert "synthetic-dino" in text and "planted_truth" in text and "synthetic-sae" in text
    # The metadata preview: a table of top blindspots and inline thumbnails, kept small.
    assert "| demo-a | suppressed |" in summary.preview_md
    assert summary.preview_md.count("data:image/jpeg;base64,") >= 4
    assert len(summary.preview_md) < 80_000
    # A rebuild replaces the images of the previous one.
    (out / "img" / "stale.jpg").write_bytes(b"x")
    build_report(cfg, out)
    assert not (out / "img" / "stale.jpg").exists()


def test_report_with_required_tables_only_and_with_none(tmp_path):
    cfg = build_run(tmp_path, tables="required")
    summary = build_report(cfg, tmp_path / "report")
    text = " ".join(_check_page(summary, tmp_path / "report").text)
    assert summary.n_models == 2
    assert "concept_labels" in text and "datapoint_deltas" in text  # says what is missing
    for table in ("concept_stats", "blindspots", "concept_top_images"):
        for f in (cfg.layout.tables / table).glob("*.parquet"):
            f.unlink()
    empty = build_report(cfg, tmp_path / "report2")
    assert (empty.n_models, empty.n_blindspots, empty.n_images) == (0, 0, 0)
    empty_text = " ".join(" ".join(_parse(empty.path).text).split())
    assert "concept_stats has not been materialised" in empty_text


@pytest.mark.slow
def test_report_with_hundreds_of_concept_cards_renders_fast(tmp_path):
    cfg = build_run(
        tmp_path, n_images=48, n_concepts=400, tables="library", active_per_image=40, flip=0.3
    )
    flagged = pl.read_parquet(cfg.layout.tables / "blindspots" / "demo-a.parquet")
    opts = ReportOptions(per_kind=150, images_per_concept=4, max_table_rows=400)
    t0 = time.perf_counter()
    summary = build_report(cfg, tmp_path / "report", opts)
    seconds = time.perf_counter() - t0
    print(f"\nreport: {summary.n_concept_cards} concept cards, {summary.n_images} images, "
          f"{flagged.height} flagged on demo-a, {seconds:.1f} s")  # fmt: skip
    assert summary.n_concept_cards >= 200
    assert seconds < 60
    _check_page(summary, tmp_path / "report")


def test_a_build_that_fails_midway_leaves_the_previous_report_whole(
    library_run, tmp_path, monkeypatch
):
    """A full disk while the images of a new report are written: the old page and every image
    it shows are still there, byte for byte; the next build that succeeds replaces them."""
    import errno

    from blindspot_assets.report.images import ImageWriter

    cfg = library_run
    out = tmp_path / "report"
    build_report(cfg, out)
    page = (out / "index.html").read_bytes()
    shown = re.findall(r'src="(img/[^"]+)"', page.decode())
    before = {src: (out / src).read_bytes() for src in shown}
    assert shown

    real_save = ImageWriter._save
    calls = {"n": 0}

    def full_disk(self, arr, rel):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, arr, rel)

    monkeypatch.setattr(ImageWriter, "_save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_report(cfg, out)
    assert (out / "index.html").read_bytes() == page
    assert {src: (out / src).read_bytes() for src in shown} == before
    monkeypatch.setattr(ImageWriter, "_save", real_save)
    build_report(cfg, out)
    assert not (out / ".staging").exists() and not (out / ".img.old").exists()
    assert all(
        (out / src).exists()
        for src in re.findall(r'src="(img/[^"]+)"', (out / "index.html").read_text())
    )


def test_overview_shows_the_distribution_metrics_beside_the_counts(tmp_path):
    cfg = build_run(tmp_path, tables="library")
    summaries = read_table(cfg.layout.tables, "model_summaries", "all")
    metrics = {
        "fd_dinov2": (12.5, 11.0, 14.0),
        "precision": (0.81, 0.75, 0.86),
        "recall": (0.42, 0.375, 0.47),
        "density": (0.93, 0.8, 1.07),
        "coverage": (0.64, 0.58, 0.7),
    }
    columns = {"n_real": 400, "n_generated": 398}
    for name, (value, low, high) in metrics.items():
        columns |= {name: value, f"{name}_ci_low": low, f"{name}_ci_high": high}
    with_metrics = summaries.with_columns(**{k: pl.lit(v) for k, v in columns.items()})
    write_table_partition(cfg.layout.tables, "model_summaries", "all", with_metrics)
    out = tmp_path / "report"
    build_report(cfg, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    overview = page[page.index('id="overview"') : page.index('id="model-')]
    assert "<th>FD (CLS)</th>" in overview and "<th>coverage</th>" in overview
    for cell in ("12.5 [11, 14]", "0.42 [0.375, 0.47]", "0.64 [0.58, 0.7]", "400 / 398"):
        assert f"<td>{cell}</td>" in overview, cell
    assert "CLS tokens of the run's encoder" in overview


def test_the_page_files_are_package_data():
    """The template, styles and scripts are files of the report package, read through
    importlib.resources; every one of them is declared package data, so a wheel carries it."""
    import tomllib
    from fnmatch import fnmatch

    from blindspot_assets.report import page

    root = Path(page.__file__).parent
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {p.relative_to(root).as_posix() for p in files} >= {
        "templates/page.html.j2", "static/report.css", "static/report.js", "static/concept_map.js"
    }  # fmt: skip
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["blindspot_assets.report"]
    for p in files:
        assert any(fnmatch(p.relative_to(root).as_posix(), g) for g in globs), p
        assert page.resource(p.relative_to(root).as_posix()) == p.read_text(encoding="utf-8")

"""The report's views of the paper's analyses: concept map, token-frequency bands, variants."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import polars as pl

from blindspot_assets import stats as lib
from blindspot_assets.report import build_report
from blindspot_assets.report.analyses import frequency_bands
from blindspot_assets.stats.concept_map import concept_map_table
from blindspot_assets.store.tables import write_table_partition
from tests.report.synthetic_run import build_run


def test_frequency_bands_are_binned_quantiles():
    rng = np.random.default_rng(0)
    nb_fire = np.r_[10 ** rng.uniform(0, 4, 2000), 0.0, np.nan]
    relative = np.r_[rng.uniform(-1, 1, 2000), 0.5, 0.5]
    x, lo, mid, hi = frequency_bands(nb_fire, relative, n_bins=8)
    assert x.size == 8 and np.all(np.diff(x) > 0)
    assert np.all((lo <= mid) & (mid <= hi)) and lo.min() >= 0 and hi.max() <= 1
    # uniform relative on [-1, 1]: the 5% and 95% of sigmoid(relative/0.4) sit near the ends
    sig = 1 / (1 + np.exp(-np.array([-0.9, 0.0, 0.9]) / 0.4))
    np.testing.assert_allclose([lo.mean(), mid.mean(), hi.mean()], sig, atol=0.04)
    assert frequency_bands(np.zeros(3), np.zeros(3))[0].size == 0  # nothing fires


def test_concept_map_keeps_dictionary_neighbours_together():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    cluster = np.repeat(np.arange(4), 25)
    rows = centres[cluster] + 0.15 * rng.normal(size=(100, 32))
    rows *= rng.uniform(0.5, 3.0, size=(100, 1))  # scale is ignored: cosine
    df = concept_map_table(rows, seed=0)
    assert df.columns == ["concept", "x", "y", "method"] and df["method"][0] == "tsne_cosine"
    xy = df.select("x", "y").to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (cluster[d.argmin(axis=1)] == cluster).mean() > 0.95
    assert np.allclose(concept_map_table(rows, seed=0).select("x", "y").to_numpy(), xy)
    # a small map runs on one thread whatever is asked (the asset asks for every core)
    assert np.array_equal(
        concept_map_table(rows, seed=0, n_jobs=-1).select("x", "y").to_numpy(), xy
    )
    assert concept_map_table(rows[:3])["method"][0] == "pca"  # too few for t-SNE


def test_report_shows_concept_map_frequency_bands_and_variants(tmp_path):
    cfg = build_run(tmp_path, tables="library")
    root = cfg.layout.tables
    c = int(pl.read_parquet(root / "concept_stats" / "demo-a.parquet")["concept"].max()) + 1
    rng = np.random.default_rng(1)
    write_table_partition(root, "concept_map", "all", concept_map_table(rng.normal(size=(c, 8))))
    params = cfg.stats.params
    deltas = {k: pl.read_parquet(root / "datapoint_deltas" / f"{k}.parquet") for k in cfg.models}
    a, b = list(cfg.models)[:2]
    variants = lib.compare_variants(deltas[a], deltas[b], params, a, b)
    write_table_partition(root, "variant_comparisons", "all", variants)

    summary = build_report(cfg, tmp_path / "report")
    page = summary.path.read_text(encoding="utf-8")
    # The map: one point per concept, a model chooser, the data for the script.
    svg_map = re.search(r'<svg id="concept-map".*?</svg>', page, flags=re.S)
    assert svg_map is not None
    tree = ET.fromstring(svg_map.group(0))
    circles = tree.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == c
    assert circles[0].find("{http://www.w3.org/2000/svg}title").text.startswith("concept 0")
    assert f'<option value="{a}">' in page and f'<option value="{b}">' in page
    data = json.loads(re.search(r'id="concept-map-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["delta"][a]) == c and data["concepts"] == list(range(c))
    assert 'href="#concept-map-section"' in page
    # The paper's frequency figure beside the image-frequency one.
    assert "Token fire count vs sigmoid(relative / 0.4)" in page and "5–95% band" in page
    # The variant comparison has its own section, not the generic table dump.
    section = page.split('<section id="variants">', 1)[1].split("</section>", 1)[0]
    assert f"{a} vs {b}" in section and "b closer" in section and "‖ξ(x′) − ξ(x)‖" in section
    tables_dump = page.split('<section id="tables">', 1)[-1] if 'id="tables"' in page else ""
    assert "variant_comparisons" not in tables_dump

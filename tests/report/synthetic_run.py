"""A small, complete run for report tests, built in seconds without an SAE or statistics run.

Images come from the real library (demo world source and demo generators). The features and
codes row stores are written through the store layer with synthetic, planted token codes:
concept 0 fires on real images and never on demo-a's (suppressed), concept 1 fires on every
demo-a image (exaggerated). The tables come from the statistics library itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from blindspot_assets.config import RunConfig, parse_config
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sources.demo import fetch
from blindspot_assets.store.images import write_lineage
from blindspot_assets.store.layout import REAL, code_arrays, feature_arrays
from blindspot_assets.store.rowstore import RowStore
from blindspot_assets.store.tables import refresh_views, write_table_partition
from tests.conftest import demo_config_dict, write_config

GRID = 8
N_REGISTERS = 4
N_TOKENS = 1 + N_REGISTERS + GRID * GRID
K_MAX = 4
SUPPRESSED, EXAGGERATED = 0, 1


def _token_codes(
    rng: np.random.Generator, n_images: int, n_concepts: int, active: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs on the patch grid for every (image, active concept)."""
    idx = np.full((n_images, N_TOKENS, K_MAX), -1, np.int32)
    val = np.zeros((n_images, N_TOKENS, K_MAX), np.float16)
    xi = np.zeros((n_images, n_concepts), np.float32)
    nfire = np.zeros((n_images, n_concepts), np.uint16)
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    for i in range(n_images):
        dense = np.zeros((N_TOKENS, n_concepts), np.float32)
        for c in np.flatnonzero(active[i]):
            cy, cx = rng.uniform(0, GRID - 1, size=2)
            bump = 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
            bump[bump < 0.2] = 0
            dense[1 + N_REGISTERS :, c] = bump.reshape(-1)
        dense[0, active[i]] = 0.5  # the CLS token carries them too (not drawn)
        top = np.argsort(-dense, axis=1)[:, :K_MAX]
        top_val = np.take_along_axis(dense, top, axis=1)
        idx[i] = np.where(top_val > 0, top, -1)
        val[i] = top_val
        xi[i] = dense.sum(axis=0)
        nfire[i] = (dense > 0).sum(axis=0)
    return idx, val, xi, nfire


def _write_codes(
    path: Path, ids: list[str], arrays: tuple[np.ndarray, ...], n_concepts: int
) -> None:
    idx, val, xi, nfire = arrays
    store = RowStore.create_or_resume(
        path,
        ids,
        code_arrays(N_TOKENS, n_concepts, K_MAX),
        {"fingerprint": "synthetic", "n_concepts": n_concepts, "k_max": K_MAX},
        chunk_rows=16,
    )
    valid = np.ones(len(ids), bool)
    for start, stop in store.iter_row_blocks():
        data = {"xi": xi[start:stop], "nfire": nfire[start:stop]}
        data |= {"token_idx": idx[start:stop], "token_val": val[start:stop]}
        store.write_block(start, data, valid[start:stop], ["ok"] * (stop - start))
    store.finish()


def _features(path: Path, ids: list[str], tokens: np.ndarray) -> None:
    store = RowStore.create_or_resume(
        path,
        ids,
        feature_arrays(N_TOKENS, tokens.shape[2]),
        {"fingerprint": "synthetic", "encoder_id": "synthetic-dino", "n_tokens": N_TOKENS,
         "dim": int(tokens.shape[2])},
        chunk_rows=16,
    )  # fmt: skip
    for start, stop in store.iter_row_blocks():
        ok = np.ones(stop - start, bool)
        store.write_block(start, {"tokens": tokens[start:stop]}, ok, ["ok"] * (stop - start))
    store.finish()


def _library_tables(cfg: RunConfig, key: str, stamp: dict[str, str]) -> None:
    """The optional tables, computed by the statistics library itself (real schemas)."""
    from blindspot_assets import stats as lib

    tables = cfg.layout.tables
    deltas = lib.compute_datapoint_deltas(cfg.layout.codes(REAL), cfg.layout.codes(key), 5)
    write_table_partition(tables, "datapoint_deltas", key, deltas.with_columns(**stamp))
    mem = lib.find_memorization_candidates(cfg.layout.features(REAL), cfg.layout.features(key))
    write_table_partition(tables, "memorization_candidates", key, mem.with_columns(**stamp))


def build_run(
    tmp_path: Path,
    n_images: int = 32,
    n_concepts: int = 24,
    tables: str = "library",
    active_per_image: int = 3,
    flip: float = 0.1,
) -> RunConfig:
    """A run under ``tmp_path``. ``tables``: "library" (every table, from the statistics
    library) or "required" (only concept_stats, blindspots, concept_top_images). ``flip``: the
    fraction of (image, concept) activations a model gets wrong (more → more blindspots)."""
    from blindspot_assets import stats as lib

    raw = demo_config_dict(tmp_path, n_images=n_images)
    raw["stats"] = {**raw["stats"], "n_bootstrap": 100, "n_permutations": 100}
    cfg = parse_config(raw, write_config(tmp_path, raw))
    params = cfg.stats.params
    rng = np.random.default_rng(0)
    real = fetch(cfg.real, cfg.layout.real_images, cfg.seed)
    ids = real["image_id"].to_list()
    captions = real["caption"].to_list()
    gen_captions: dict[str, list[str]] = {}
    for key in cfg.models:
        gen = build_generator(cfg.model(key))
        manifest, _ = generate_image_set(
            gen, key, real, cfg.layout.generated_images(key), batch_size=16
        )
        write_lineage(cfg.layout.generated_images(key), gen.lineage())
        by_id = dict(zip(manifest["image_id"], manifest["caption"], strict=True))
        gen_captions[key] = [by_id.get(i, "") for i in ids]

    real_tokens = rng.normal(size=(n_images, N_TOKENS, 8)).astype(np.float16)
    _features(cfg.layout.features(REAL), ids, real_tokens)
    # Concept 0 is "red" and concept 1 "striped": they fire where the caption says so.
    p_active = active_per_image / n_concepts
    active_real = rng.random((n_images, n_concepts)) < p_active
    active_real[:, SUPPRESSED] = ["red" in c for c in captions]
    active_real[:, EXAGGERATED] = ["striped" in c for c in captions]
    real_codes = _token_codes(rng, n_images, n_concepts, active_real)
    _write_codes(cfg.layout.codes(REAL), ids, real_codes, n_concepts)
    root = cfg.layout.tables
    real_top = lib.top_images_per_concept(cfg.layout.codes(REAL), 6)
    write_table_partition(
        root, "concept_top_images", REAL, real_top.with_columns(dataset=pl.lit(REAL))
    )
    stats_by_model = {}
    for m, key in enumerate(cfg.models):
        active = active_real ^ (rng.random(active_real.shape) < flip)
        if m == 0:  # demo-a: never red, striped everywhere
            active[:, SUPPRESSED] = False
            active[:, EXAGGERATED] = True
        codes = _token_codes(rng, n_images, n_concepts, active)
        _write_codes(cfg.layout.codes(key), ids, codes, n_concepts)
        gen_tokens = rng.normal(size=real_tokens.shape).astype(np.float16)
        gen_tokens[:2] = real_tokens[:2]  # two memorised copies
        _features(cfg.layout.features(key), ids, gen_tokens)
        stamp = {"model_key": pl.lit(key), "model_version": pl.lit("1"),
                 "sae_version": pl.lit("synthetic-sae"), "run_id": pl.lit("test-run")}  # fmt: skip
        stats = lib.compute_concept_stats(cfg.layout.codes(REAL), cfg.layout.codes(key), params)
        stats_by_model[key] = stats
        write_table_partition(root, "concept_stats", key, stats.with_columns(**stamp))
        flagged = lib.flag_blindspots(stats, params).with_columns(**stamp)
        write_table_partition(root, "blindspots", key, flagged)
        top = lib.top_images_per_concept(cfg.layout.codes(key), 6)
        write_table_partition(
            root, "concept_top_images", key, top.with_columns(dataset=pl.lit(key))
        )
        if tables == "library":
            _library_tables(cfg, key, stamp)
    if tables == "library":
        labels = lib.label_concepts(cfg.layout.codes(REAL), real, 5)
        write_table_partition(root, "concept_labels", "all", labels)
        write_table_partition(
            root, "model_summaries", "all", lib.model_summaries(stats_by_model, params)
        )
        write_table_partition(
            root, "model_correlations", "all", lib.relative_correlations(stats_by_model)
        )
        freq = pl.concat(
            [
                lib.frequency_vs_relative(df, params).with_columns(model_key=pl.lit(k))
                for k, df in stats_by_model.items()
            ],
            how="diagonal_relaxed",
        )
        write_table_partition(root, "frequency_vs_relative", "all", freq)
    refresh_views(cfg.layout.duckdb, root)
    return cfg

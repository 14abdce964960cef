"""SIGKILL during feature extraction, generation and SAE training: the re-run resumes and ends
identical to an uninterrupted run; a block whose data was written but not flagged done is never
read as complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from blindspot_assets.encoders.dinov2 import extract_features, load_encoder
from blindspot_assets.generators.registry import build_generator
from blindspot_assets.generators.runner import generate_image_set
from blindspot_assets.sae import RASAEConfig, TrainConfig, train_sae
from blindspot_assets.sae.checkpoint import load_train_checkpoint
from blindspot_assets.store.images import read_manifest
from blindspot_assets.store.rowstore import RowStore
from tests.faults.conftest import kill_worker_after
from tests.sae.planted import planted_atoms, write_planted_store


def _chunk_bytes(store: Path, array: str) -> dict[str, bytes]:
    root = store / array
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_features_killed_mid_block_resume_byte_identical(demo_world, tmp_path):
    config, cfg = demo_world
    killed = tmp_path / "killed.zarr"
    # batch_size 32: 3 blocks; kill while block 2's tokens are on disk but its flags are not
    kill_worker_after(
        "features", {"config": str(config), "store": str(killed), "pause_s": 1.5}, "data_written", 2
    )
    partial = RowStore.open(killed)
    done = partial.done()
    assert done[:32].all() and not done[32:].any()  # block 2 written, never flagged
    assert np.asarray(partial.array("tokens")[32:64]).any()  # its data is there ...
    assert not partial.valid()[32:].any()  # ... and not read as complete
    assert not partial.is_complete()
    assert partial.pending_blocks() == [(32, 64), (64, 96)]

    encoder = load_encoder(cfg.encoder)
    manifest = read_manifest(cfg.layout.real_images)
    resumed = extract_features(encoder, manifest, cfg.layout.real_images, killed)
    assert resumed.n_computed == 64
    reference = tmp_path / "reference.zarr"
    extract_features(encoder, manifest, cfg.layout.real_images, reference)
    a, b = RowStore.open(killed), RowStore.open(reference)
    for name in ("tokens", "valid", "done", "status", "image_id"):
        assert np.array_equal(a.array(name)[:], b.array(name)[:]), name
    assert _chunk_bytes(killed, "tokens") == _chunk_bytes(reference, "tokens")
    assert sum(resumed.n_invalid_by_status.values()) == 2  # the two truncated files
    assert all(k.startswith("decode_error") for k in resumed.n_invalid_by_status)


@pytest.mark.slow
def test_generation_killed_resumes_with_identical_images(demo_world, tmp_path):
    config, cfg = demo_world
    out = tmp_path / "gen-killed"
    kill_worker_after(
        "generation",
        {"config": str(config), "model": "demo-a", "out": str(out), "pause_s": 0.5},
        "generated",
        5,
    )
    real = read_manifest(cfg.layout.real_images)
    n = real.filter(pl.col("status") == "ok").height
    made_before = {p.name for p in out.glob("*.png")}
    assert 16 <= len(made_before) < n  # killed part-way
    assert not (out / "manifest.parquet").exists()  # no manifest claims a finished set

    gen = build_generator(cfg.model("demo-a"))
    manifest, summary = generate_image_set(gen, "demo-a", real, out, batch_size=4)
    assert summary.n_reused >= len(made_before) - 4  # the last batch may be redone
    assert summary.n_reused + summary.n_generated == n
    ref_dir = tmp_path / "gen-reference"
    ref_manifest, _ = generate_image_set(gen, "demo-a", real, ref_dir, batch_size=4)
    assert manifest.drop("detail").equals(ref_manifest.drop("detail"))
    ok = manifest.filter(pl.col("status") == "ok")["path"].to_list()
    assert len(ok) == n
    for name in ok:
        assert (out / name).read_bytes() == (ref_dir / name).read_bytes(), name


SAE = {"d": 32, "n_concepts": 48, "sparsity": "batchtopk", "k": 3, "n_candidates": 128}
TRAIN = {
    "epochs": 12,
    "batch_size": 128,
    "lr": 1e-2,
    "buffer_tokens": 1024,
    "kmeans_tokens": 4096,
    "kmeans_batch": 1024,
    "log_every": 1,
    "checkpoint_every": 10,
    "dead_after_tokens": 2000,
    "eval_tokens": 2000,
    "device": "cpu",
}


@pytest.mark.slow
def test_sae_killed_resumes_step_identical(tmp_path):
    store = tmp_path / "planted.zarr"
    write_planted_store(store, planted_atoms(24, 32, seed=1), n_rows=96, n_tokens=16, seed=2)
    ckpt = tmp_path / "checkpoints"
    args = {
        "store": str(store),
        "checkpoints": str(ckpt),
        "sae": SAE,
        "train": TRAIN,
        "pause_s": 0.05,
    }
    kill_worker_after("sae", args, "step", 25)
    saved = load_train_checkpoint(ckpt)
    assert saved is not None and saved[3]["step"] == 20  # the last complete checkpoint

    resumed = train_sae([store], RASAEConfig(**SAE), TrainConfig(**TRAIN), checkpoint_dir=ckpt)
    assert "resumed from step 20" in resumed.adjustments
    reference = train_sae([store], RASAEConfig(**SAE), TrainConfig(**TRAIN))
    assert resumed.metrics["steps"] == reference.metrics["steps"] > 20
    got, want = resumed.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name

"""Fixtures of the SAE tests: seeded, two threads, a small trained model shared per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from blindspot_assets.sae import RASAEConfig, TrainConfig, TrainResult, train_sae
from tests.sae.planted import planted_atoms, write_planted_store

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    """Seeded, one intra-op thread: the tiny matrices here gain nothing from threads, and on a
    busy 2-core machine every parallel op waits for a core (measured 8 ms per op vs 0.1 ms)."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Trained:
    result: TrainResult
    features: Path
    atoms: np.ndarray


TINY_SAE = RASAEConfig(
    d=32, n_concepts=48, sparsity="batchtopk", k=3, n_candidates=256, delta_relax=0.05
)
TINY_TRAIN = TrainConfig(
    epochs=20,
    batch_size=128,
    lr=1e-2,
    lr_end=1e-5,
    buffer_tokens=1024,
    kmeans_tokens=20_000,
    kmeans_batch=1024,
    log_every=50,
    dead_after_tokens=5_000,
    eval_tokens=4_000,
    checkpoint_every=0,
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A BatchTopK RA-SAE trained on 200 images × 16 tokens of a planted 24-atom dictionary."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    atoms = planted_atoms(24, 32, seed=0)
    write_planted_store(root / "features.zarr", atoms, 200, 16, seed=1, invalid_rows=(3, 40))
    result = train_sae([root / "features.zarr"], TINY_SAE, TINY_TRAIN)
    torch.set_num_threads(threads)
    return Trained(result, root / "features.zarr", atoms)

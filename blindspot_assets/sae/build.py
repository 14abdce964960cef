"""What the ``sae`` asset runs: the run's SAE trained on its feature stores (and, with
``sae.replicate_seed``, a replicate), or released / earlier weights installed in its place; and
the SAE's version, stamped on every result row computed with it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindspot_assets.config import RunConfig
from blindspot_assets.sae import released
from blindspot_assets.sae.checkpoint import load_sae, read_header, save_sae
from blindspot_assets.sae.train import train_sae
from blindspot_assets.store.layout import REAL
from blindspot_assets.store.rowstore import RowStore, store_exists

LogFn = Callable[[str], None]

# Header fields that say how or where an SAE was made, not which SAE it is: wall-clock rates
# and the paths of the training stores (the same data on local disk or on S3 is the same data).
_UNVERSIONED = {"training_stores", "seconds", "train_tokens_per_s", "tokens_per_s", "device"}


def sae_version(sae_dir: Path) -> str:
    """A short hash of what decides the SAE: config, training-data version, step, quality."""
    header = read_header(sae_dir)
    header = {k: v for k, v in header.items() if k not in _UNVERSIONED}
    if isinstance(header.get("metrics"), dict):
        header["metrics"] = {k: v for k, v in header["metrics"].items() if k not in _UNVERSIONED}
    text = json.dumps(header, sort_keys=True, default=str)
    return "sae:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def sae_dictionary(sae_dir: Path) -> np.ndarray:
    """The SAE's dictionary rows (c, d) as float32."""
    model, _ = load_sae(sae_dir)
    with torch.no_grad():
        return np.asarray(model.dictionary().float().cpu().numpy())


@dataclass(frozen=True)
class BuiltSAE:
    """What the ``sae`` asset records: where the SAE is, its shape and how it was made."""

    path: Path
    n_concepts: int
    d: int
    data_version: str
    trained_on: str | None = None  # None: installed from ``sae.pretrained``
    pretrained: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    replicate_path: Path | None = None
    replicate_seed: int | None = None
    seconds: float = 0.0


def training_stores(cfg: RunConfig) -> list[str | Path]:
    """The feature stores the SAE learns from (``sae.train_on``)."""
    stores: list[str | Path] = [cfg.layout.features(REAL)]
    if cfg.sae.train_on == "real+generated":
        stores += [
            cfg.layout.features(m) for m in cfg.models if store_exists(cfg.layout.features(m))
        ]
    return stores


def build_sae(cfg: RunConfig, log: LogFn) -> BuiltSAE:
    """The run's SAE at ``cfg.layout.sae``: installed from ``sae.pretrained`` or trained."""
    stores = training_stores(cfg)
    d = int(RowStore.open(stores[0]).array("tokens").shape[2])
    if cfg.sae.pretrained:
        return install_pretrained(cfg, Path(cfg.sae.pretrained), d, log)
    return train_run_sae(cfg, stores, d, log)


def train_run_sae(cfg: RunConfig, stores: list[str | Path], d: int, log: LogFn) -> BuiltSAE:
    """Train the SAE (resuming its checkpoints), save it, and its replicate when configured."""
    sae_cfg = cfg.sae.model.sized(d)
    train_cfg = cfg.sae.train
    t0 = time.perf_counter()
    result = train_sae(
        stores,
        sae_cfg,
        train_cfg,
        checkpoint_dir=cfg.layout.sae / "checkpoints",
        log=lambda m: log(f"sae step {json.dumps(m, default=str)}"),
    )
    header: dict[str, Any] = {
        "trained_on": cfg.sae.train_on,
        "training_stores": [str(s) for s in stores],
        "data_version": result.data_version,
        "metrics": result.metrics,
        "run_config": cfg.name,
    }
    save_sae(result.model, cfg.layout.sae, header)
    replicate_seed = None
    if cfg.sae.replicate_seed is not None:
        replicate_seed = train_replicate(cfg, stores, d, log)
    return BuiltSAE(
        path=cfg.layout.sae,
        n_concepts=sae_cfg.n_concepts,
        d=d,
        data_version=str(result.data_version),
        trained_on=cfg.sae.train_on,
        metrics=dict(result.metrics),
        config={"sae": sae_cfg.__dict__, "train": train_cfg.__dict__},
        replicate_path=cfg.layout.sae_replicate if replicate_seed is not None else None,
        replicate_seed=replicate_seed,
        seconds=time.perf_counter() - t0,
    )


def train_replicate(cfg: RunConfig, stores: list[str | Path], d: int, log: LogFn) -> int:
    """The same SAE trained again with ``sae.replicate_seed``: blindspots say which of their
    concepts replicate in it (``stats.replication``). Returns the seed."""
    spec = replace(cfg.sae.train, seed=int(cfg.sae.replicate_seed or 0))
    result = train_sae(
        stores,
        cfg.sae.model.sized(d),
        spec,
        checkpoint_dir=cfg.layout.sae_replicate / "checkpoints",
        log=lambda m: log(f"sae replicate step {json.dumps(m, default=str)}"),
    )
    header = {"replicate_of": str(cfg.layout.sae), "seed": spec.seed,
              "data_version": result.data_version, "metrics": result.metrics}  # fmt: skip
    save_sae(result.model, cfg.layout.sae_replicate, header)
    return int(spec.seed)


def install_pretrained(cfg: RunConfig, src: Path, d: int, log: LogFn) -> BuiltSAE:
    """Use released or previously trained weights instead of training (``sae.pretrained``,
    through ``released.install_pretrained``)."""
    model, header = released.install_pretrained(src, cfg.layout.sae, cfg.sae.threshold, log)
    if model.cfg.d != d:
        raise ValueError(
            f"sae.pretrained {src} expects {model.cfg.d}-d tokens but the features are {d}-d: "
            "use the encoder it was trained on (DINOv2 ViT-B/14 with registers: 768-d)"
        )
    return BuiltSAE(
        path=cfg.layout.sae,
        n_concepts=model.cfg.n_concepts,
        d=d,
        data_version=str(header["data_version"]),
        pretrained=str(src),
        header={k: v for k, v in header.items() if k != "config"},
    )

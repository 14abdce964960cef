"""Self-describing SAE files: safetensors weights beside a JSON header. Never pickle.

    <dir>/model.safetensors   every tensor of the model's state dict
    <dir>/header.json         schema, config, step, data version, library versions, lineage

Training checkpoints (for an exact resume) add ``train_state.safetensors`` (optimizer moments,
loader carry, RNG, fire tracker) and ``train_state.json`` (step, loader position).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from blindspot_assets.sae.config import RASAEConfig
from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.store.atomic import write_atomic, write_json_atomic

SAE_SCHEMA = "blindspot.rasae/1"
MODEL_FILE = "model.safetensors"
HEADER_FILE = "header.json"


def library_versions() -> dict[str, str]:
    try:
        ours = importlib.metadata.version("blindspot-assets")
    except importlib.metadata.PackageNotFoundError:
        ours = "unknown"
    return {"blindspot_assets": ours, "torch": torch.__version__}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(cpu, str(tmp)))


def save_sae(model: RelaxedArchetypalSAE, out_dir: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Write the model and its header; returns the full header as written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = {
        "step": None,
        "data_version": None,
        **header,
        "schema": SAE_SCHEMA,
        "config": model.cfg.to_dict(),
        "library": library_versions(),
    }
    _save_tensors(dict(model.state_dict()), out_dir / MODEL_FILE)
    write_json_atomic(out_dir / HEADER_FILE, full)
    return full


def read_header(sae_dir: Path) -> dict[str, Any]:
    path = Path(sae_dir) / HEADER_FILE
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {sae_dir}: {HEADER_FILE} is missing")
    header: dict[str, Any] = json.loads(path.read_text())
    if header.get("schema") != SAE_SCHEMA:
        raise ValueError(f"{path} has schema {header.get('schema')!r}, expected {SAE_SCHEMA!r}")
    return header


def build_empty(cfg: RASAEConfig) -> RelaxedArchetypalSAE:
    """A model with no storage yet (meta device): fill it with ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        return RelaxedArchetypalSAE(cfg)


def load_sae(
    sae_dir: Path, device: str | torch.device = "cpu"
) -> tuple[RelaxedArchetypalSAE, dict[str, Any]]:
    """The model (in eval mode) and its header."""
    header = read_header(sae_dir)
    cfg = RASAEConfig.from_dict(header["config"])
    tensors = load_file(str(Path(sae_dir) / MODEL_FILE), device=str(device))
    model = build_empty(cfg)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.eval()
    return model, header


# -- training checkpoints (exact resume) -------------------------------------------------------
TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"


def save_train_checkpoint(
    ckpt_dir: Path,
    model: RelaxedArchetypalSAE,
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> None:
    """Write a complete checkpoint into ``ckpt_dir/latest`` atomically (tmp dir, then rename)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp, final, old = ckpt_dir / "latest.tmp", ckpt_dir / "latest", ckpt_dir / "latest.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(model, tmp, header)
    _save_tensors(tensors, tmp / TRAIN_STATE_TENSORS)
    write_json_atomic(tmp / TRAIN_STATE_JSON, state)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_train_checkpoint(
    ckpt_dir: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor], dict[str, Any]] | None:
    """(model tensors, header, train tensors, train state) of ``ckpt_dir/latest``, or None."""
    final = Path(ckpt_dir) / "latest"
    if not (final / TRAIN_STATE_JSON).exists():
        return None
    header = read_header(final)
    model_tensors = load_file(str(final / MODEL_FILE))
    train_tensors = load_file(str(final / TRAIN_STATE_TENSORS))
    state = json.loads((final / TRAIN_STATE_JSON).read_text())
    return model_tensors, header, train_tensors, state

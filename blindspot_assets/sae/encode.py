"""Concept codes of a feature store: per-image energy ξ, fire counts and sparse token codes.

Streams one block of rows at a time and, inside it, encodes a few whole rows at a time so the
dense codes never exceed ``dense_budget`` floats: nothing of size (all tokens × c) is built.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.store.layout import code_arrays
from blindspot_assets.store.rowstore import RowStore

ProgressFn = Callable[[int, int], None]
DENSE_BUDGET = 1 << 24  # floats of dense codes alive at once (64 MiB in float32)
RECON_ARRAYS = ("recon_sse", "token_sq", "token_sum")


def model_fingerprint(model: RelaxedArchetypalSAE) -> str:
    """Hash of what decides the codes: encoder, norm, fused dictionary, threshold, config."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    with torch.no_grad():
        was_training = model.training
        model.eval()
        parts = [*model.encoder.state_dict().values(), *model.norm.state_dict().values()]
        parts += [model.dictionary(), model.threshold]
        model.train(was_training)
        for t in parts:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def reconstruction_block(
    model: RelaxedArchetypalSAE, tokens_rtd: torch.Tensor, z_nc: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per row: Σ_t ‖x − x̂‖², Σ_t ‖x‖² and Σ_t x, with x̂ the exact sparse decode of ``z``."""
    r, t, d = tokens_rtd.shape
    x_rtd = tokens_rtd.float()
    xhat_rtd = model.decode_sparse(z_nc).view(r, t, d).float()
    return {
        "recon_sse": (x_rtd - xhat_rtd).square().sum(dim=(1, 2)).cpu().numpy(),
        "token_sq": x_rtd.square().sum(dim=(1, 2)).cpu().numpy(),
        "token_sum": x_rtd.sum(dim=1).cpu().numpy(),
    }


@torch.no_grad()
def encode_block(
    model: RelaxedArchetypalSAE, tokens_rtd: torch.Tensor, k_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, dict[str, np.ndarray]]:
    """Codes of whole rows: ξ (r, c), nfire (r, c), token idx / val (r, T, k_max), Σ L0, how
    many tokens had more than ``k_max`` active concepts (their token codes are cut), and the
    rows' reconstruction sums (``reconstruction_block``)."""
    r, t, d = tokens_rtd.shape
    z_nc = model.encode(tokens_rtd.reshape(r * t, d))
    recon = reconstruction_block(model, tokens_rtd, z_nc)
    z_rtc = z_nc.view(r, t, -1)
    xi = z_rtc.sum(dim=1, dtype=torch.float32)
    active = z_rtc > 0
    nfire = active.sum(dim=1)
    l0_n = active.view(r * t, -1).sum(dim=1)
    kk = min(k_max, z_nc.shape[1])
    vals, idx = z_nc.topk(kk, dim=-1)
    idx = torch.where(vals > 0, idx, torch.full_like(idx, -1))
    if kk < k_max:  # fewer concepts than slots: pad
        vals = torch.nn.functional.pad(vals, (0, k_max - kk))
        idx = torch.nn.functional.pad(idx, (0, k_max - kk), value=-1)
    return (
        xi.cpu().numpy(),
        nfire.to(torch.int32).cpu().numpy().astype(np.uint16),
        idx.view(r, t, k_max).to(torch.int32).cpu().numpy(),
        vals.view(r, t, k_max).to(torch.float16).cpu().numpy(),
        int(l0_n.sum()),
        int((l0_n > k_max).sum()),
        recon,
    )


def encode_features_to_codes(
    model: RelaxedArchetypalSAE,
    features_path: str | Path,
    codes_path: str | Path,
    k_max: int,
    batch_rows: int | None = None,
    progress: ProgressFn | None = None,
    device: str | torch.device | None = None,
    dense_budget: int = DENSE_BUDGET,
    *,
    rows: tuple[int, int] | None = None,
    finish: bool = True,
) -> dict[str, Any]:
    """Write the codes row store of ``features_path`` at ``codes_path``; resumes.

    ``token_idx`` is -1 where ``token_val`` is 0 (a token with fewer than ``k_max`` active
    concepts). Rows invalid in the features store stay invalid with their status.

    ``rows`` restricts the work to one shard (``RowStore.shard_ranges`` of the codes store), so
    several workers fill one store at once; the call with ``finish=True`` after every shard is
    done finishes it.
    """
    t0 = time.perf_counter()
    features = RowStore.open(features_path)
    tokens = features.array("tokens")
    n, t, d = tokens.shape
    if d != model.cfg.d:
        raise ValueError(f"features are {d}-d but the SAE expects d={model.cfg.d}")
    c = model.n_concepts
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    codes = open_codes_store(model, features_path, codes_path, k_max)
    recon_specs = {k: v for k, v in code_arrays(t, c, k_max, d).items() if k in RECON_ARRAYS}
    sae_fp = str(codes.attrs["sae_fingerprint"])
    f_valid, f_status = features.valid(), features.status()
    pending = codes.pending_blocks(rows)
    total = sum(b - a for a, b in pending)
    rows_per_pass = max(1, dense_budget // (t * c))
    done_rows = 0
    tokens_encoded = 0
    l0_sum = 0
    truncated = 0
    for start, stop in pending:
        r = stop - start
        xi = np.zeros((r, c), np.float32)
        nfire = np.zeros((r, c), np.uint16)
        t_idx = np.full((r, t, k_max), -1, np.int32)
        t_val = np.zeros((r, t, k_max), np.float16)
        recon = {k: np.zeros((r, *spec.row_shape), np.float32) for k, spec in recon_specs.items()}
        valid = f_valid[start:stop].copy()
        block = np.asarray(tokens[start:stop])  # the store dtype (float16 or float32)
        live = np.flatnonzero(valid)
        for a in range(0, len(live), rows_per_pass):
            sel = live[a : a + rows_per_pass]
            x = torch.from_numpy(block[sel].astype(np.float32)).to(dev)
            bx, bn, bi, bv, l0, cut, brecon = encode_block(model, x, k_max)
            xi[sel], nfire[sel], t_idx[sel], t_val[sel] = bx, bn, bi, bv
            for key, values in brecon.items():
                recon[key][sel] = values
            l0_sum += l0
            truncated += cut
            tokens_encoded += len(sel) * t
        data: dict[str, np.ndarray] = {
            "xi": xi,
            "nfire": nfire,
            "token_idx": t_idx,
            "token_val": t_val,
            **recon,
        }
        codes.write_block(start, data, valid, f_status[start:stop])
        done_rows += r
        if progress:
            progress(done_rows, total)
    seconds = time.perf_counter() - t0
    if finish and codes.is_complete():
        codes.finish(completed_at=time.time())
    lo, hi = rows if rows is not None else (0, n)
    return {
        "rows": hi - lo,
        "valid_rows": int(codes.valid(rows).sum()),
        "rows_computed": done_rows,
        "tokens_encoded": tokens_encoded,
        "l0_sum": l0_sum,
        "mean_l0": l0_sum / tokens_encoded if tokens_encoded else float("nan"),
        "tokens_over_k_max": truncated,
        "seconds": seconds,
        "tokens_per_s": tokens_encoded / seconds if seconds > 0 else 0.0,
        "sae_fingerprint": sae_fp,
    }


def open_codes_store(
    model: RelaxedArchetypalSAE, features_path: str | Path, codes_path: str | Path, k_max: int
) -> RowStore:
    """Create, resume or (when the SAE or the features changed) rebuild a codes store."""
    features = RowStore.open(features_path)
    _, t, d = features.array("tokens").shape
    sae_fp = model_fingerprint(model)
    attrs = {
        # "recon-v1": the layout with the reconstruction arrays (older stores are rebuilt)
        "fingerprint": json.dumps([sae_fp, features.attrs.get("fingerprint"), k_max, "recon-v1"]),
        "sae_fingerprint": sae_fp,
        "features_fingerprint": features.attrs.get("fingerprint"),
        "n_concepts": model.n_concepts,
        "k_max": k_max,
        "token_idx_empty": -1,
    }
    return RowStore.create_or_resume(
        codes_path,
        features.image_ids(),
        code_arrays(t, model.n_concepts, k_max, d),
        attrs,
        chunk_rows=features.chunk_rows,
    )

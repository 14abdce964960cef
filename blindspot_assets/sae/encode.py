"""Concept codes of a feature store: per-image energy ξ, fire counts and sparse token codes.

Streams one block of rows at a time and, inside it, encodes a few whole rows at a time so the
dense codes never exceed ``dense_budget`` floats: nothing of size (all tokens × c) is built.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blindspot_assets.sae.model import RelaxedArchetypalSAE
from blindspot_assets.store.layout import code_arrays
from blindspot_assets.store.rowstore import RowStore

ProgressFn = Callable[[int, int], None]
Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # row-sorted rows, cols, vals
DENSE_BUDGET = 1 << 25  # floats of dense pre-activations alive at once (128 MiB in float32)
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
    model: RelaxedArchetypalSAE, tokens_rtd: torch.Tensor, entries: Entries
) -> dict[str, np.ndarray]:
    """Per row: Σ_t ‖x − x̂‖², Σ_t ‖x‖² and Σ_t x, with x̂ the exact sparse decode of the
    code ``entries`` (rows, cols, vals of the r·t tokens)."""
    r, t, d = tokens_rtd.shape
    x_rtd = tokens_rtd.float()
    rows, cols, vals = entries
    xhat_rtd = model.decode_entries(vals, rows, cols, r * t).view(r, t, d).float()
    return {
        "recon_sse": (x_rtd - xhat_rtd).square().sum(dim=(1, 2)).cpu().numpy(),
        "token_sq": x_rtd.square().sum(dim=(1, 2)).cpu().numpy(),
        "token_sum": x_rtd.sum(dim=1).cpu().numpy(),
    }


def _top_per_token(entries: Entries, n: int, k_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k_max`` largest codes of each token, descending: (idx (n, k_max), -1 where empty;
    val (n, k_max), 0 where empty). A segmented sort of the entries, no dense n × c top-k."""
    rows, cols, vals = entries
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    srt_rows = rows[order]
    counts = torch.bincount(rows, minlength=n)
    rank = (
        torch.arange(rows.numel(), device=rows.device)
        - (torch.cumsum(counts, 0) - counts)[srt_rows]
    )
    keep = rank < k_max
    idx = torch.full((n, k_max), -1, dtype=torch.int64, device=rows.device)
    val = torch.zeros((n, k_max), dtype=vals.dtype, device=rows.device)
    idx[srt_rows[keep], rank[keep]] = cols[order][keep]
    val[srt_rows[keep], rank[keep]] = vals[order][keep]
    return idx, val


@torch.no_grad()
def encode_block(
    model: RelaxedArchetypalSAE, tokens_rtd: torch.Tensor, k_max: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, dict[str, np.ndarray]]:
    """Codes of whole rows: ξ (r, c), nfire (r, c), token idx / val (r, T, k_max), Σ L0, how
    many tokens had more than ``k_max`` active concepts (their token codes are cut), and the
    rows' reconstruction sums (``reconstruction_block``).

    Built from the non-zero entries of the codes (``model.encode_entries``): the only dense
    r·T × c array is the encoder's output; sums, counts and the per-token top codes touch the
    ~k entries per token."""
    r, t, d = tokens_rtd.shape
    c = model.n_concepts
    entries = model.encode_entries(tokens_rtd.reshape(r * t, d))
    rows, cols, vals = entries
    recon = reconstruction_block(model, tokens_rtd, entries)
    flat = torch.div(rows, t, rounding_mode="floor") * c + cols  # (image, concept)
    xi = torch.zeros(r * c, dtype=torch.float32, device=rows.device)
    xi.index_add_(0, flat, vals.float())
    nfire = torch.bincount(flat, minlength=r * c)
    l0_n = torch.bincount(rows, minlength=r * t)
    idx, val = _top_per_token(entries, r * t, k_max)
    return (
        xi.view(r, c).cpu().numpy(),
        nfire.view(r, c).to(torch.int32).cpu().numpy().astype(np.uint16),
        idx.view(r, t, k_max).to(torch.int32).cpu().numpy(),
        val.view(r, t, k_max).to(torch.float16).cpu().numpy(),
        int(l0_n.sum()),
        int((l0_n > k_max).sum()),
        recon,
    )


@dataclass
class _Tally:
    done_rows: int = 0
    tokens: int = 0
    l0: int = 0
    truncated: int = 0


def _encode_rows(
    model: RelaxedArchetypalSAE,
    block: np.ndarray,
    valid: np.ndarray,
    specs: dict[str, tuple[tuple[int, ...], Any]],
    rows_per_pass: int,
    dev: torch.device,
    tally: _Tally,
) -> dict[str, np.ndarray]:
    """The codes store arrays of one block of feature rows (invalid rows stay zero / -1)."""
    r, t, _ = block.shape
    k_max = specs["token_idx"][0][1]
    data = {k: np.zeros((r, *shape), dtype) for k, (shape, dtype) in specs.items()}
    data["token_idx"].fill(-1)
    live = np.flatnonzero(valid)
    for a in range(0, len(live), rows_per_pass):
        sel = live[a : a + rows_per_pass]
        x = torch.from_numpy(block[sel].astype(np.float32)).to(dev)
        bx, bn, bi, bv, l0, cut, brecon = encode_block(model, x, k_max)
        data["xi"][sel], data["nfire"][sel] = bx, bn
        data["token_idx"][sel], data["token_val"][sel] = bi, bv
        for key, values in brecon.items():
            data[key][sel] = values
        tally.l0 += l0
        tally.truncated += cut
        tally.tokens += len(sel) * t
    return data


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

    Reading (and decompressing) the next block and writing (compressing) the previous one run
    in two threads beside the encoder, so storage overlaps the compute.
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
    specs = {
        k: (tuple(v.row_shape), v.dtype)
        for k, v in code_arrays(t, c, k_max, d).items()
        if k in ("xi", "nfire", "token_idx", "token_val", *RECON_ARRAYS)
    }
    f_valid, f_status = features.valid(), features.status()
    pending = codes.pending_blocks(rows)
    total = sum(b - a for a, b in pending)
    rows_per_pass = max(1, dense_budget // (t * c))
    tally = _Tally()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:

        def read(i: int) -> Future[np.ndarray] | None:
            if i >= len(pending):
                return None
            a, b = pending[i]
            return reader.submit(lambda: np.asarray(tokens[a:b]))  # zarr reads in the thread

        next_read = read(0)
        written: Future[None] | None = None
        for i, (start, stop) in enumerate(pending):
            assert next_read is not None
            block = next_read.result()  # the store dtype (float16 or float32)
            next_read = read(i + 1)
            valid = f_valid[start:stop].copy()
            data = _encode_rows(model, block, valid, specs, rows_per_pass, dev, tally)
            if written is not None:
                written.result()
            written = writer.submit(codes.write_block, start, data, valid, f_status[start:stop])
            tally.done_rows += stop - start
            if progress:
                progress(tally.done_rows, total)
        if written is not None:
            written.result()
    seconds = time.perf_counter() - t0
    if finish and codes.is_complete():
        codes.finish(completed_at=time.time())
    lo, hi = rows if rows is not None else (0, n)
    return _summary(tally, hi - lo, int(codes.valid(rows).sum()), seconds, codes)


def _summary(
    tally: _Tally, n_rows: int, valid: int, seconds: float, codes: RowStore
) -> dict[str, Any]:
    return {
        "rows": n_rows,
        "valid_rows": valid,
        "rows_computed": tally.done_rows,
        "tokens_encoded": tally.tokens,
        "l0_sum": tally.l0,
        "mean_l0": tally.l0 / tally.tokens if tally.tokens else float("nan"),
        "tokens_over_k_max": tally.truncated,
        "seconds": seconds,
        "tokens_per_s": tally.tokens / seconds if seconds > 0 else 0.0,
        "sae_fingerprint": str(codes.attrs["sae_fingerprint"]),
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

"""How many SAE codes flip at the threshold θ when DINOv2 features lose precision.

The released RA-SAE is a BatchTopK SAE used with a hard cut: ``z = pre · 1[pre ≥ θ]``. A code
whose pre-activation sits near θ is switched on or off by any rounding of the features. This
measures it on the CPU with a base-size DINOv2-with-registers (ViT-B/14, 4 registers, 768-d,
random weights: a transformers config saved with ``save_pretrained`` and loaded by path through
``load_encoder``) on synthetic photo-like JPEGs, and a 32,000-concept SAE encoder
(``RelaxedArchetypalSAE.encode``, fused, random weights).

Feature variants, each against the reference (fp32 model, fp32 features):

- ``fp32 model → fp16 store``: the reference features rounded to float16 (the store's default);
- ``fp32 model → bf16 store``: rounded to bfloat16;
- ``fp16 model → fp16 store``: the encoder run in float16 (``encoder.dtype: float16``), stored
  float16 — configs/paper-fast.yaml on a GPU;
- ``bf16 model → bf16 store``: the encoder run in bfloat16.

SAE encoders: ``random`` (PyTorch's default init) and ``data`` (each concept's encoder row a
normalised token of other images, so pre-activations have the heavy tail of data-aligned
directions). θ: the value giving a mean of ``--l0`` active concepts per token on the reference
(32, the paper's k), and the released SAE's 0.829.

Columns: ``flipped`` = codes on in one and off in the other, ``flip/active`` = flipped / active
codes of the reference, ``tokens flipped`` = share of tokens with at least one flip, ``Δξ/ξ`` =
relative L1 change of the per-image energies ξ, ``feat err`` = relative L2 error of the features.

Run by hand: ``.venv/bin/python benchmarks/bench_precision.py [--images 16] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from bench_features import make_jpegs, save_base_dinov2

from blindspot_assets.config import EncoderSpec
from blindspot_assets.encoders.dinov2 import load_encoder
from blindspot_assets.sae.config import RASAEConfig
from blindspot_assets.sae.model import RelaxedArchetypalSAE

warnings.filterwarnings("ignore", message=".*torchvision.*")
RELEASED_THETA = 0.829


def features(model_dir: Path, images: list, dtype: torch.dtype) -> torch.Tensor:
    """(N, T, d) float32 ``last_hidden_state`` with the model run in ``dtype``."""
    enc = load_encoder(EncoderSpec(model_id=str(model_dir), dtype="float32", device="cpu"))
    pixels = enc.preprocess(images)
    model = enc.model.to(dtype)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 4):
            hidden = model(pixel_values=pixels[i : i + 4].to(dtype)).last_hidden_state
            out.append(hidden.float())
    return torch.cat(out)


def sae(kind: str, other_tokens: torch.Tensor, c: int, seed: int = 0) -> RelaxedArchetypalSAE:
    torch.manual_seed(seed)
    d = other_tokens.shape[-1]
    model = RelaxedArchetypalSAE(RASAEConfig(d=d, n_concepts=c, n_candidates=0)).eval()
    if kind == "data":
        with torch.no_grad():
            pick = torch.randint(0, other_tokens.shape[0], (c,))
            rows = torch.nn.functional.normalize(other_tokens[pick], dim=1)
            model.encoder.weight.copy_(rows)
            model.encoder.bias.zero_()
    return model


def theta_for_l0(model: RelaxedArchetypalSAE, x_nd: torch.Tensor, l0: int) -> float:
    """θ at which (a sample of ≤ 1,024 of) the reference tokens have ``l0`` active concepts per
    token on average: the (1 − l0/c) quantile of their pre-activations."""
    sample = x_nd[torch.randperm(x_nd.shape[0], generator=torch.Generator().manual_seed(0))[:1024]]
    with torch.no_grad():
        pre = model.pre_activations(sample).flatten()
    return float(pre.kthvalue(pre.numel() - l0 * sample.shape[0] + 1).values)


def compare(
    model: RelaxedArchetypalSAE,
    theta: float,
    ref_ntd: torch.Tensor,
    var_ntd: torch.Tensor,
    block: int,
) -> dict[str, float]:
    model.threshold.fill_(theta)
    n, t, d = ref_ntd.shape
    ref, var = ref_ntd.reshape(-1, d), var_ntd.reshape(-1, d)
    active = flipped = tokens_flipped = 0
    xi_ref = torch.zeros(n, model.n_concepts, dtype=torch.float64)
    xi_var = torch.zeros_like(xi_ref)
    with torch.no_grad():
        for i in range(0, ref.shape[0], block):
            z_ref, z_var = model.encode(ref[i : i + block]), model.encode(var[i : i + block])
            on_ref, on_var = z_ref > 0, z_var > 0
            active += int(on_ref.sum())
            diff = on_ref ^ on_var
            flipped += int(diff.sum())
            tokens_flipped += int(diff.any(dim=1).sum())
            rows = torch.arange(i, min(i + block, ref.shape[0])) // t
            xi_ref.index_add_(0, rows, z_ref.double())
            xi_var.index_add_(0, rows, z_var.double())
    return {
        "active/token": active / ref.shape[0],
        "flipped": flipped,
        "flip/active %": 100 * flipped / max(active, 1),
        "tokens flipped %": 100 * tokens_flipped / ref.shape[0],
        "Δξ/ξ %": 100 * float((xi_var - xi_ref).abs().sum() / xi_ref.abs().sum().clamp(min=1e-12)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--concepts", type=int, default=32000)
    parser.add_argument("--l0", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block", type=int, default=512, help="tokens per SAE pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"commit {commit} · torch {torch.__version__} · {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = save_base_dinov2(root / "dinov2-base-random")
        make_jpegs(root / "img", 2 * args.images)
        from PIL import Image

        imgs = [Image.open(p).convert("RGB") for p in sorted((root / "img").glob("*.jpg"))]
        eval_imgs, other_imgs = imgs[: args.images], imgs[args.images :]
        t0 = time.perf_counter()
        ref = features(model_dir, eval_imgs, torch.float32)
        other = features(model_dir, other_imgs, torch.float32).reshape(-1, ref.shape[-1])
        print(f"fp32 features {tuple(ref.shape)} in {time.perf_counter() - t0:.1f} s")
        variants: dict[str, Callable[[], torch.Tensor]] = {
            "fp32 model → fp16 store": lambda: ref.half().float(),
            "fp32 model → bf16 store": lambda: ref.bfloat16().float(),
            "fp16 model → fp16 store": lambda: features(model_dir, eval_imgs, torch.float16)
            .half()
            .float(),
            "bf16 model → bf16 store": lambda: features(model_dir, eval_imgs, torch.bfloat16)
            .bfloat16()
            .float(),
        }
        feats = {}
        for name, make in variants.items():
            t0 = time.perf_counter()
            feats[name] = make()
            err = float((feats[name] - ref).norm() / ref.norm())
            print(f"{name}: features in {time.perf_counter() - t0:.1f} s, rel. L2 error {err:.2e}")
        flat = ref.reshape(-1, ref.shape[-1])
        header = ["SAE", "θ", "variant", "active/token", "flipped", "flip/active %",
                  "tokens flipped %", "Δξ/ξ %"]  # fmt: skip
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for kind in ("random", "data"):
            model = sae(kind, other, args.concepts)
            for theta_name, theta in (
                (f"L0={args.l0}", theta_for_l0(model, flat, args.l0)),
                ("0.829", RELEASED_THETA),
            ):
                for name, var in feats.items():
                    row = compare(model, theta, ref, var, args.block)
                    cells = [kind, f"{theta_name} ({theta:.3f})", name]
                    cells += [f"{row[h]:.4g}" if isinstance(row[h], float) else str(row[h])
                              for h in header[3:]]  # fmt: skip
                    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

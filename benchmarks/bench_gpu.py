"""GPU throughput of the two heavy per-image steps, for a machine with a CUDA card.

Prints one table:

- DINOv2 ViT-B/14 with 4 registers at full size (random weights, the released checkpoint's
  shapes and preprocessing), forward only on pixel tensors already on the card, in float32,
  bfloat16 and float16: images/s at a few batch sizes;
- the decode-bound rate: JPEG decode + the checkpoint's image processor on N CPU threads
  (what feeds the card), and ``extract_features`` end to end (decode workers, forward in
  bfloat16, float16 rows into Zarr) — the rate a user sees;
- RA-SAE encoding at 32,000 concepts (d = 768, BatchTopK, the codes store's k_max = 64):
  tokens/s and images/s (261 tokens each) in float32 and bfloat16 autocast, against the
  measured matmul ceiling of the encoder's shape in the same dtype;
- one RA-SAE training step at 32,000 concepts and 32,000 candidate points (BatchTopK, AuxK,
  bfloat16 autocast, batch 4,096): seconds per step, tokens/s and the TFLOP/s of its dense part.

Run by hand in the project's environment on a GPU box:
``.venv/bin/python benchmarks/bench_gpu.py [--images 512] [--threads 1 4 8 16]``; paste the
table into RESULTS.md with the card's name. Random weights are exact for timing: the work does
not depend on the values. ``--toy`` runs every section on the CPU at toy sizes (a check that
the script works, not a measurement).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore", message=".*torchvision.*")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


DEVICE = "cuda"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_cuda(fn: object, repeats: int) -> float:
    """Seconds per call of ``fn`` after two warm-up calls (synchronised)."""
    assert callable(fn)
    fn()
    fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeats


def bench_dinov2(
    model_dir: Path, batches: list[int], dtypes: list[str]
) -> list[tuple[str, str, float, str]]:
    from transformers import AutoModel

    rows = []
    for name in dtypes:
        dtype = DTYPES[name]
        model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(DEVICE).eval()
        for b in batches:
            x = torch.randn(b, 3, 224, 224, device=DEVICE, dtype=dtype)
            with torch.inference_mode():
                sec = time_cuda(lambda m=model, x=x: m(pixel_values=x), repeats=10)
            rows.append(("DINOv2-B/14-reg forward", f"{name}, batch {b}", b / sec, "images/s"))
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_decode(
    model_dir: Path, image_dir: Path, paths: list[str], threads: list[int]
) -> list[tuple[str, str, float, str]]:
    from blindspot_assets.config import EncoderSpec
    from blindspot_assets.encoders.dinov2 import load_encoder

    enc = load_encoder(EncoderSpec(model_id=str(model_dir), device="cpu", dtype="float32"))
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]

    def prepare(chunk: list[str]) -> torch.Tensor:
        return enc.preprocess([enc.images.load(image_dir / p) for p in chunk])

    rows = []
    for n in threads:
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            list(pool.map(prepare, chunks))
            sec = time.perf_counter() - t0
        rows.append(("decode + preprocess (CPU)", f"{n} threads", len(paths) / sec, "images/s"))
    return rows


def bench_extract(
    model_dir: Path, image_dir: Path, manifest: object, workers: list[int], dtype: Any
) -> list[tuple[str, str, float, str]]:
    from blindspot_assets.config import EncoderSpec
    from blindspot_assets.encoders.dinov2 import extract_features, load_encoder

    rows = []
    for w in workers:
        spec = EncoderSpec(
            model_id=str(model_dir), device=DEVICE, dtype=dtype, batch_size=64,
            decode_workers=w,
        )  # fmt: skip
        enc = load_encoder(spec)
        with tempfile.TemporaryDirectory() as tmp:
            s = extract_features(enc, manifest, image_dir, Path(tmp) / "f.zarr")  # type: ignore[arg-type]
        rows.append(
            (
                "extract_features end to end",
                f"{dtype}, {w} decode workers",
                s.images_per_s,
                "images/s",
            )
        )
    return rows


def matmul_ceiling_tflops(n: int, d: int, c: int, dtype: torch.dtype) -> float:
    """Measured TFLOP/s of an (n × d)·(d × c) matmul in ``dtype``: the encoder's ceiling."""
    a = torch.randn(n, d, device=DEVICE, dtype=dtype)
    b = torch.randn(d, c, device=DEVICE, dtype=dtype)
    return 2.0 * n * d * c / time_cuda(lambda: a @ b, repeats=20) / 1e12


def bench_sae(n_concepts: int, tokens_per_image: int = 261) -> list[tuple[str, str, float, str]]:
    from blindspot_assets.sae.config import RASAEConfig
    from blindspot_assets.sae.encode import encode_block
    from blindspot_assets.sae.model import RelaxedArchetypalSAE

    cfg = RASAEConfig(d=768, n_concepts=n_concepts, k=32, n_candidates=0, sparsity="batchtopk")
    torch.manual_seed(0)
    model = RelaxedArchetypalSAE(cfg).to(DEVICE).eval()
    model.threshold.fill_(0.5)
    rows = []
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        tflops = matmul_ceiling_tflops(64 * tokens_per_image, 768, n_concepts, dtype)
        ceiling = tflops * 1e12 / (2.0 * 768 * n_concepts)
        rows.append(
            (
                f"matmul ceiling, c = {n_concepts}",
                label,
                ceiling,
                f"tokens/s ({tflops:.2f} TFLOP/s)",
            )
        )
        for images in (16, 64):
            x = torch.randn(images, tokens_per_image, 768, device=DEVICE)

            def run(x: torch.Tensor = x, amp: bool = dtype == torch.bfloat16) -> None:
                with torch.inference_mode(), torch.autocast(DEVICE, torch.bfloat16, enabled=amp):
                    encode_block(model, x, 64)

            rate = images * tokens_per_image / time_cuda(run, repeats=5)
            rows.append(
                (f"RA-SAE encode, c = {n_concepts}", f"{label}, {images} images", rate,
                 f"tokens/s ({rate / ceiling:.0%} of the ceiling)")
            )  # fmt: skip
    return rows


def bench_sae_step(n_concepts: int, batch: int) -> list[tuple[str, str, float, str]]:
    """One training step at ``n_concepts`` concepts = candidate points (BatchTopK, AuxK)."""
    from blindspot_assets.sae.config import RASAEConfig, TrainConfig
    from blindspot_assets.sae.model import RelaxedArchetypalSAE
    from blindspot_assets.sae.train import Trainer

    d, c = 768, n_concepts
    cfg = RASAEConfig(d=d, n_concepts=c, k=32, n_candidates=c, sparsity="batchtopk")
    torch.manual_seed(0)
    x = torch.randn(4 * batch, d, device=DEVICE)
    model = RelaxedArchetypalSAE(cfg, torch.randn(c, d)).to(DEVICE)
    model.project_()
    model.init_encoder_from_dictionary()
    trainer = Trainer(model.train(), TrainConfig(dead_after_tokens=batch), torch.device(DEVICE))
    it = iter(range(10**9))
    sec = time_cuda(lambda: trainer.step(x[(next(it) % 4) * batch :][:batch], lr=1e-4), 5)
    # encoder forward, W·C forward, W gradient (the dense matmuls of a step)
    tflops = 2.0 * (batch * d * c + 2 * c * c * d) / sec / 1e12
    mem = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    return [
        (f"RA-SAE training step, c = m = {c}", f"bf16 autocast, batch {batch}", batch / sec,
         f"tokens/s ({sec:.3f} s/step, {tflops:.2f} TFLOP/s dense part, {mem:.1f} GiB peak)")
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512, help="JPEGs for the decode benchmarks")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--concepts", type=int, default=32000)
    ap.add_argument("--train-batch", type=int, default=4096)
    ap.add_argument("--toy", action="store_true", help="CPU, toy sizes: checks the script runs")
    args = ap.parse_args()
    global DEVICE
    dtypes = list(DTYPES)
    if args.toy:
        DEVICE, dtypes = "cpu", ["float32", "bfloat16"]
        args.images, args.batches, args.threads = 8, [2], [1, 2]
        args.concepts, args.train_batch = 1024, 512
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; this machine has none (try --toy)")
    from bench_features import make_jpegs, save_base_dinov2

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_base_dinov2(Path(tmp) / "dinov2-base-reg")
        image_dir = Path(tmp) / "images"
        manifest = make_jpegs(image_dir, args.images)
        rows = bench_dinov2(model_dir, args.batches, dtypes)
        rows += bench_decode(model_dir, image_dir, manifest["path"].to_list(), args.threads)
        extract_dtype = "float32" if args.toy else "bfloat16"
        rows += bench_extract(model_dir, image_dir, manifest, [0, max(args.threads)], extract_dtype)
    rows += bench_sae(args.concepts)
    rows += bench_sae_step(args.concepts, args.train_batch)
    name = "CPU (--toy)" if args.toy else torch.cuda.get_device_name()
    print(f"\n{name} · torch {torch.__version__}\n")
    print("| what | setting | rate | unit |\n|---|---|---:|---|")
    for what, setting, value, unit in rows:
        print(f"| {what} | {setting} | {value:,.1f} | {unit} |")


if __name__ == "__main__":
    main()

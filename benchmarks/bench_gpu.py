"""GPU throughput of the two heavy per-image steps, for a machine with a CUDA card.

Prints one table:

- DINOv2 ViT-B/14 with 4 registers at full size (random weights, the released checkpoint's
  shapes and preprocessing), forward only on pixel tensors already on the card, in float32,
  bfloat16 and float16: images/s at a few batch sizes;
- the decode-bound rate: JPEG decode + the checkpoint's image processor on N CPU threads
  (what feeds the card), and ``extract_features`` end to end (decode workers, forward in
  bfloat16, float16 rows into Zarr) — the rate a user sees;
- RA-SAE encoding at 32,000 concepts (d = 768, BatchTopK, the codes store's k_max = 64):
  tokens/s and images/s (261 tokens each) in float32 and bfloat16 autocast.

Run by hand in the project's environment on a GPU box:
``.venv/bin/python benchmarks/bench_gpu.py [--images 512] [--threads 1 4 8 16]``; paste the
table into RESULTS.md with the card's name. Random weights are exact for timing: the work does
not depend on the values.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=".*torchvision.*")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync() -> None:
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


def bench_dinov2(model_dir: Path, batches: list[int]) -> list[tuple[str, str, float, str]]:
    from transformers import AutoModel

    rows = []
    for name, dtype in DTYPES.items():
        model = AutoModel.from_pretrained(model_dir, dtype=dtype).to("cuda").eval()
        for b in batches:
            x = torch.randn(b, 3, 224, 224, device="cuda", dtype=dtype)
            with torch.inference_mode():
                sec = time_cuda(lambda m=model, x=x: m(pixel_values=x), repeats=10)
            rows.append(("DINOv2-B/14-reg forward", f"{name}, batch {b}", b / sec, "images/s"))
        del model
        torch.cuda.empty_cache()
    return rows


def bench_decode(model_dir: Path, image_dir: Path, paths: list[str], threads: list[int]) -> list:
    from blindspot_assets.config import EncoderSpec
    from blindspot_assets.encoders.dinov2 import _load_image, load_encoder

    enc = load_encoder(EncoderSpec(model_id=str(model_dir), device="cpu", dtype="float32"))
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]

    def prepare(chunk: list[str]) -> torch.Tensor:
        return enc.preprocess([_load_image(image_dir / p) for p in chunk])

    rows = []
    for n in threads:
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            list(pool.map(prepare, chunks))
            sec = time.perf_counter() - t0
        rows.append(("decode + preprocess (CPU)", f"{n} threads", len(paths) / sec, "images/s"))
    return rows


def bench_extract(model_dir: Path, image_dir: Path, manifest: object, workers: list[int]) -> list:
    from blindspot_assets.config import EncoderSpec
    from blindspot_assets.encoders.dinov2 import extract_features, load_encoder

    rows = []
    for w in workers:
        spec = EncoderSpec(
            model_id=str(model_dir), device="cuda", dtype="bfloat16", batch_size=64,
            decode_workers=w,
        )  # fmt: skip
        enc = load_encoder(spec)
        with tempfile.TemporaryDirectory() as tmp:
            s = extract_features(enc, manifest, image_dir, Path(tmp) / "f.zarr")  # type: ignore[arg-type]
        rows.append(
            ("extract_features end to end", f"bf16, {w} decode workers", s.images_per_s, "images/s")
        )
    return rows


def bench_sae(n_concepts: int, tokens_per_image: int = 261) -> list[tuple[str, str, float, str]]:
    from blindspot_assets.sae.config import RASAEConfig
    from blindspot_assets.sae.encode import encode_block
    from blindspot_assets.sae.model import RelaxedArchetypalSAE

    cfg = RASAEConfig(d=768, n_concepts=n_concepts, k=32, n_candidates=0, sparsity="batchtopk")
    torch.manual_seed(0)
    model = RelaxedArchetypalSAE(cfg).to("cuda").eval()
    model.threshold.fill_(0.5)
    rows = []
    for images in (16, 64):
        x = torch.randn(images, tokens_per_image, 768, device="cuda")
        for label, autocast in (("float32", False), ("bfloat16 autocast", True)):

            def run(x: torch.Tensor = x, autocast: bool = autocast) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast("cuda", torch.bfloat16, enabled=autocast),
                ):
                    encode_block(model, x, 64)

            sec = time_cuda(run, repeats=5)
            tokens = images * tokens_per_image
            rows.append(
                (f"RA-SAE encode, c = {n_concepts}", f"{label}, {images} images", tokens / sec,
                 f"tokens/s ({images / sec:.0f} images/s)")
            )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512, help="JPEGs for the decode benchmarks")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--concepts", type=int, default=32000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; this machine has none")
    from bench_features import make_jpegs, save_base_dinov2

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_base_dinov2(Path(tmp) / "dinov2-base-reg")
        image_dir = Path(tmp) / "images"
        manifest = make_jpegs(image_dir, args.images)
        rows = bench_dinov2(model_dir, args.batches)
        rows += bench_decode(model_dir, image_dir, manifest["path"].to_list(), args.threads)
        rows += bench_extract(model_dir, image_dir, manifest, [0, max(args.threads)])
    rows += bench_sae(args.concepts)
    print(f"\n{torch.cuda.get_device_name()} · torch {torch.__version__}\n")
    print("| what | setting | rate | unit |\n|---|---|---:|---|")
    for what, setting, value, unit in rows:
        print(f"| {what} | {setting} | {value:,.0f} | {unit} |")


if __name__ == "__main__":
    main()

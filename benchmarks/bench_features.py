"""Feature extraction images/s: our batched, streamed path against a plain per-image loop.

For a tiny and a base-size (ViT-B/14 with 4 registers, 768-d, random weights) DINOv2 on this
CPU, on synthetic 512×512 JPEGs (the downloaded LAION images are downscaled to a 512 short
side), it prints:

- ``decode floor``: JPEG decode + RGB conversion alone (what any path must pay per image);
- ``decode+preprocess floor``: the same plus the checkpoint's image processor (resize 256
  bicubic, crop 224, normalise);
- ``FLOP floor``: the forward pass's multiply-adds at this CPU's measured matmul rate;
- ``ours``: ``extract_features`` (decode, batch of 32, forward, float16 into Zarr, flags);
- ``per-image loop``: open, process and encode one image at a time with transformers, keeping
  the outputs in a list (no store).

Run by hand: ``.venv/bin/python benchmarks/bench_features.py [--tiny-images 256]
[--base-images 64] [--loop-images 32] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image, ImageDraw

warnings.filterwarnings("ignore", message=".*torchvision.*")


def make_jpegs(out: Path, n: int, side: int = 512, seed: int = 0) -> pl.DataFrame:
    """Photo-like test images: smooth gradients, shapes and noise (JPEG ~60-90 kB each)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side] / side
    rows = []
    for i in range(n):
        base = np.stack(
            [np.sin(xx * rng.uniform(1, 6) + c) * 0.5 + 0.5 for c in rng.uniform(0, 3, 3)], -1
        )
        img = (base * 200 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(img)
        draw = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = rng.integers(0, side, 2)
            r = int(rng.integers(20, 120))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.integers(0, 255, 3)))
        name = f"img{i:05d}.jpg"
        im.save(out / name, quality=90)
        rows.append(
            {"image_id": f"img{i:05d}", "path": name, "caption": "", "status": "ok", "detail": ""}
        )
    return pl.DataFrame(rows)


def save_base_dinov2(path: Path) -> Path:
    """ViT-B/14 with 4 registers, random weights, the released checkpoint's preprocessing."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=14,
        image_size=518,
        num_register_tokens=4,
    )
    torch.manual_seed(0)
    Dinov2WithRegistersModel(config).eval().save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=True,
        do_convert_rgb=True,
    ).save_pretrained(path)
    return path


def forward_flops(n_tokens: int, d: int, layers: int, mlp: int) -> float:
    """Multiply-adds × 2 of a ViT forward: QKV + output projections, MLP, attention matmuls."""
    per_layer = 2 * n_tokens * (4 * d * d + 2 * d * mlp) + 2 * 2 * n_tokens * n_tokens * d
    return float(layers * per_layer)


def matmul_gflops(d: int, mlp: int, rows: int = 8192, repeats: int = 5) -> float:
    """This CPU's fp32 matmul rate on the model's own MLP shape (best of a few)."""
    a, b = torch.randn(rows, d), torch.randn(d, mlp)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * d * mlp / best / 1e9


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bench_model(
    name: str,
    model_dir: Path,
    images: pl.DataFrame,
    image_dir: Path,
    n_ours: int,
    n_loop: int,
    batch: int,
    decode_workers: list[int],
) -> list[tuple[str, str, float, str]]:
    from blindspot_assets.config import EncoderSpec
    from blindspot_assets.encoders.dinov2 import _load_image, extract_features, load_encoder

    crop = 224
    enc = load_encoder(
        EncoderSpec(
            model_id=str(model_dir),
            image_size=crop,
            batch_size=batch,
            device="cpu",
            dtype="float32",
        )
    )
    cfg = enc.model.config
    paths = [image_dir / p for p in images["path"]]
    rows: list[tuple[str, str, float, str]] = []

    t0 = time.perf_counter()
    decoded = [_load_image(p) for p in paths[:n_ours]]
    t_dec = time.perf_counter() - t0
    rows.append((name, "decode floor (1 core)", rate(n_ours, t_dec), f"{n_ours} JPEGs 512²"))

    t0 = time.perf_counter()
    for a in range(0, n_ours, batch):
        enc.processor(images=decoded[a : a + batch], return_tensors="pt")
    t_pre = time.perf_counter() - t0
    rows.append(
        (
            name,
            "decode+preprocess floor",
            rate(n_ours, t_dec + t_pre),
            "PIL resize 256 bicubic, crop 224, normalise",
        )
    )

    flops = forward_flops(
        enc.n_tokens, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    )
    gflops = matmul_gflops(cfg.hidden_size, cfg.intermediate_size)
    rows.append(
        (
            name,
            "FLOP floor (forward only)",
            gflops * 1e9 / flops,
            f"{flops / 1e9:.2f} GFLOP/image at {gflops:.0f} GFLOP/s fp32 matmul",
        )
    )

    for workers in decode_workers:
        enc.spec = replace(enc.spec, decode_workers=workers)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = extract_features(enc, images.head(n_ours), image_dir, Path(tmp) / "f.zarr")
            t_ours = time.perf_counter() - t0
        assert summary.n_valid == n_ours
        how = f"{workers} decode threads" if workers else "decode inline"
        rows.append(
            (
                name,
                f"ours: extract_features (batch {batch}, {how}, Zarr)",
                rate(n_ours, t_ours),
                f"{n_ours} images, {enc.n_tokens} tokens × {cfg.hidden_size} fp16 stored",
            )
        )

    model, processor = enc.model, enc.processor
    feats = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in paths[:n_loop]:
            with Image.open(p) as im:
                rgb = im.convert("RGB")
            px = processor(images=rgb, return_tensors="pt")["pixel_values"]
            feats.append(model(pixel_values=px).last_hidden_state.numpy())
    t_loop = time.perf_counter() - t0
    rows.append(
        (
            name,
            "plain per-image transformers loop",
            rate(n_loop, t_loop),
            f"{n_loop} images, outputs kept in a list",
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-images", type=int, default=256)
    ap.add_argument("--base-images", type=int, default=64)
    ap.add_argument("--loop-images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--decode-workers", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--skip-base", action="store_true", help="only the tiny model")
    args = ap.parse_args()
    if args.threads:
        # On these 2-core VMs each multi-threaded op pays ~8 ms of thread wake-up (a 261×64×64
        # matmul: 8 ms on 2 threads, 0.04 ms on 1), which a batch amortises and a loop does not.
        torch.set_num_threads(args.threads)
    from blindspot_assets.demo.encoder import save_tiny_dinov2

    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    n = max(args.tiny_images, args.base_images)
    images = make_jpegs(tmp / "images", n)
    size_kb = np.mean([(tmp / "images" / p).stat().st_size for p in images["path"]]) / 1024
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{n} JPEGs 512×512, mean {size_kb:.0f} kB"
    )
    tiny = save_tiny_dinov2(tmp / "tiny", image_size=224, patch_size=14, hidden=64)
    base = save_base_dinov2(tmp / "base")
    rows: list[tuple[str, str, float, str]] = []
    rows += bench_model(
        "tiny (2×64-d)",
        tiny,
        images,
        tmp / "images",
        args.tiny_images,
        min(args.loop_images * 4, args.tiny_images),
        args.batch,
        args.decode_workers,
    )
    if not args.skip_base:
        rows += bench_model(
            "base ViT-B/14-reg",
            base,
            images,
            tmp / "images",
            args.base_images,
            args.loop_images,
            args.batch,
            args.decode_workers,
        )
    print("\n| model | path | images/s | notes |")
    print("|---|---|---:|---|")
    for model, path, r, note in rows:
        print(f"| {model} | {path} | {r:.1f} | {note} |")


if __name__ == "__main__":
    main()

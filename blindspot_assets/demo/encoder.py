"""Randomly initialised DINOv2-with-registers checkpoints saved with ``save_pretrained``.

The demo world has no downloaded weights; these models go through exactly the loading code that
loads ``facebook/dinov2-with-registers-base`` by id. :func:`save_tiny_dinov2` is the demo's
(64 px, patch 8, 64-d, 2 layers); :func:`save_base_dinov2` has the released model's shapes
(ViT-B/14: 12 layers, 768-d, 12 heads, 4 registers) and processor (256 bicubic, crop 224), so a
run at the paper's shapes (261 tokens × 768) needs no hub access.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The released checkpoint's processor: resize the short side to 256 (bicubic), centre-crop 224,
# ImageNet normalisation. Other crop sizes keep the ratio: short side = round(crop · 256 / 224).
RESIZE_OVER_CROP = 256 / 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def save_processor(path: Path, crop: int, imagenet_norm: bool = True) -> Path:
    """The released checkpoint's image processor, for a ``crop``-pixel input.

    ``imagenet_norm=False`` keeps the processor class's default normalisation (the demo's tiny
    encoder was saved that way; its planted-truth tests are calibrated on it).
    """
    from transformers import BitImageProcessor

    norm = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    BitImageProcessor(
        size={"shortest_edge": round(crop * RESIZE_OVER_CROP)},
        crop_size={"height": crop, "width": crop},
        resample=3,  # bicubic
        do_center_crop=True,
        do_convert_rgb=True,
        **(norm if imagenet_norm else {}),
    ).save_pretrained(path)
    return path


def save_random_dinov2(
    path: Path,
    *,
    image_size: int,
    patch_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    crop: int,
    imagenet_norm: bool = True,
    seed: int = 0,
) -> Path:
    """A seeded, randomly initialised DINOv2-with-registers (4 registers) and its processor
    (:func:`save_processor` for a ``crop``-pixel input)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        patch_size=patch_size,
        image_size=image_size,
        num_register_tokens=4,
    )
    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    save_processor(path, crop, imagenet_norm)
    return path


def save_tiny_dinov2(
    path: Path, image_size: int = 64, patch_size: int = 8, hidden: int = 64, seed: int = 0
) -> Path:
    return save_random_dinov2(
        path,
        image_size=image_size,
        patch_size=patch_size,
        hidden=hidden,
        layers=2,
        heads=4,
        intermediate=hidden * 2,
        crop=image_size,
        imagenet_norm=False,
        seed=seed,
    )


def save_base_dinov2(path: Path, seed: int = 0) -> Path:
    """``facebook/dinov2-with-registers-base``'s architecture and processor, random weights.

    The released config's ``image_size`` is 518 (its position embeddings are interpolated to
    the 16 × 16 grid of a 224 crop); kept, so the model is the released one but for weights.
    """
    return save_random_dinov2(
        path,
        image_size=518,
        patch_size=14,
        hidden=768,
        layers=12,
        heads=12,
        intermediate=3072,
        crop=224,
        seed=seed,
    )

"""A tiny, seeded, randomly initialised DINOv2-with-registers saved with ``save_pretrained``.

The demo world has no downloaded weights; this model goes through exactly the loading code that
loads ``facebook/dinov2-with-registers-base`` by id.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_dinov2(
    path: Path, image_size: int = 64, patch_size: int = 8, hidden: int = 64, seed: int = 0
) -> Path:
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        patch_size=patch_size,
        image_size=image_size,
        num_register_tokens=4,
    )
    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    # The released checkpoint's processor, scaled: shortest edge = crop * 256 / 224, bicubic.
    BitImageProcessor(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        resample=3,
        do_center_crop=True,
        do_convert_rgb=True,
    ).save_pretrained(path)
    return path

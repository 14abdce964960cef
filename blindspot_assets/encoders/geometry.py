"""What part of an image the encoder sees: one owner for the crop geometry.

The encoder's image processor decides it (``resize`` the short side, then ``center_crop``); the
feature store records it as ``crop_fraction`` (side of the centre square the encoder sees /
short side of the image) in its attrs, and everything that draws over the image — heat maps in
the report, highlighted crops for the labeller — reads it from there, so heat maps line up with
the patches whatever the processor (the released DINOv2's is 256 → 224: 0.875).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blindspot_assets.config import EncoderSpec
from blindspot_assets.store.layout import REAL, DataLayout
from blindspot_assets.store.rowstore import RowStore

PROCESSOR_FILE = "preprocessor_config.json"
CROP_FRACTION = "crop_fraction"  # the feature store's attr


def processor_crop_fraction(processor: Mapping[str, Any]) -> float:
    """Crop side / resized short side of a transformers image processor (its ``to_dict()`` or
    ``preprocessor_config.json``); 1.0 when it does not crop."""
    crop = processor.get("crop_size") or {}
    if not processor.get("do_center_crop", bool(crop)) or not crop:
        return 1.0
    side = crop.get("height") if isinstance(crop, Mapping) else crop
    size = processor.get("size") or {}
    resized: Any = None
    if processor.get("do_resize", True):
        if isinstance(size, Mapping):
            resized = size.get("shortest_edge") or size.get("height")
        elif isinstance(size, int | float):
            resized = size
    if not isinstance(side, int | float) or not isinstance(resized, int | float) or resized <= 0:
        return 1.0
    return min(1.0, float(side) / float(resized))


def encoder_crop_fraction(layout: DataLayout, spec: EncoderSpec) -> float:
    """The crop fraction of this run's encoder: from the real feature store's lineage, else the
    processor saved with a local encoder, else the released processor's ratio (256 → 224)."""
    try:
        value = RowStore.open(layout.features(REAL)).attrs.get(CROP_FRACTION)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        value = None
    if isinstance(value, int | float) and 0 < value <= 1:
        return float(value)
    saved = Path(spec.model_id) / PROCESSOR_FILE
    if saved.is_file():
        return processor_crop_fraction(json.loads(saved.read_text()))
    return spec.image_size / round(spec.image_size * 256 / 224)

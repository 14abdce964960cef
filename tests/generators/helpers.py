"""What the family tests share: two requests, pixel access, the reproducibility check."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from blindspot_assets.generators.base import GenerationRequest, ImageGenerator, derive_seed

CAPTIONS = {"img-a": "a red bicycle by a wall", "img-b": "two dogs on a beach"}


def two_requests(key: str) -> list[GenerationRequest]:
    return [GenerationRequest(i, c, derive_seed(key, i)) for i, c in CAPTIONS.items()]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_reproducible(gen: ImageGenerator, key: str, size: tuple[int, int]) -> list[Image.Image]:
    """Two images of the right size, different from each other; the same seeds give the same
    images again; the second image made alone matches it inside the batch."""
    reqs = two_requests(key)
    first = gen.generate(reqs)
    assert [im.size for im in first] == [size, size]
    assert all(im.mode == "RGB" for im in first)
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))
    again = gen.generate(reqs)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(pixels(a), pixels(b))
    alone = gen.generate(reqs[1:])[0]
    assert np.abs(pixels(alone) - pixels(first[1])).max() <= 2
    lineage = gen.lineage()
    assert json.loads(json.dumps(lineage)) == lineage  # written as JSON beside the images
    assert lineage["version"] and lineage["libraries"]["diffusers"]
    return first

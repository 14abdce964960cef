"""What every generative-model family provides, and the resumable loop that makes an image set."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.config_fields import nearest


@dataclass(frozen=True)
class GenerationRequest:
    image_id: str  # the real image this generated image pairs with
    caption: str
    seed: int
    sample: int = 0  # which of the caption's ``images_per_caption`` images (0: the first)


class ImageGenerator(Protocol):
    """A caption-conditioned image model (a diffusers pipeline, a folder, the demo renderer)."""

    def lineage(self) -> dict[str, Any]:
        """Everything that determines the images: repo, revision, scheduler, steps, seeds."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Image.Image]:
        """One image per request, in order; raise on failure (the caller records it)."""
        ...


def derive_seed(model_key: str, image_id: str, base_seed: int = 0, sample: int = 0) -> int:
    """Per-image seed from (model, image, sample): re-running one image reproduces it; sample 0
    is the seed of a set of one image per caption."""
    text = f"{base_seed}:{model_key}:{image_id}" + (f":{sample}" if sample else "")
    h = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


ProgressFn = Callable[[int, int], None]

# What a text-conditioned generator puts on each image's ``info``: the prompt and negative
# prompt that reached its pipeline (None: not applicable). The runner writes them to the
# image's PNG text chunks and the manifest row.
PROMPT_KEYS = ("prompt", "negative_prompt")


def check_family_fields(spec: ModelSpec, known: set[str] | frozenset[str]) -> None:
    """Reject a field the model's family does not have, with the nearest known name
    (``stepz`` → ``steps``) and the list of known ones."""
    unknown = sorted(set(spec.params) - set(known))
    if not unknown:
        return
    name = unknown[0]
    near = nearest(name, known)
    hint = f" (did you mean {near!r}?)" if near else ""
    raise ConfigError(
        f"models.{spec.key}.{name}: not a field of the {spec.family!r} family{hint}; "
        f"fix: remove it, or use one of {sorted(known)}"
    )

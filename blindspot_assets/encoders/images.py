"""One image pipeline for both sides: how every image, real or generated, reaches the encoder.

The encoder sees file formats. Real training images are JPEG of every quality; diffusers writes
lossless PNG. With one side JPEG and the other PNG, a generative model with no blindspot at all
gets concepts flagged, because the SAE has concepts for compression artefacts. So no image is
encoded as it lies on disk: each one goes through the same four steps, with the same settings,
on both sides of a comparison:

1. decode (any format PIL reads) and apply the EXIF orientation;
2. colour: RGB, transparency composited over white;
3. resize: downscaled so the shorter side is at most ``max_short_side`` (one filter), never
   upscaled and never cropped (the encoder's own processor resizes and crops after this);
4. codec: an in-memory round trip through JPEG at ``quality`` (the authors stored both sides as
   JPEG at PIL's default quality 75), or none (``png``: lossless, for worlds where both sides
   are lossless), or ``as_stored`` (steps 1–3 are skipped too: only for measuring the artefact).

The policy is part of the feature store's fingerprint and of every lineage record.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from blindspot_assets.config import ImagesSpec

_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}

# The IJG (libjpeg) standard luminance quantisation table at quality 50; a file's table is this
# one scaled by the quality factor, which is how its quality is estimated.
_IJG_LUMA_SUM = sum(
    (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
     56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81,
     104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
)  # fmt: skip


@dataclass(frozen=True)
class ImagePolicy:
    """A resolved image pipeline (``quality`` is a number here, never ``match_real``)."""

    codec: str = "jpeg"  # jpeg | png | as_stored
    quality: int = 75
    max_short_side: int | None = 512
    resample: str = "lanczos"
    quality_source: str = "config"  # config | match_real (estimated from the real set)

    def lineage(self) -> dict[str, Any]:
        return {f"images_{k}": v for k, v in asdict(self).items()}

    def load(self, path: str | Path) -> Image.Image:
        """The image at ``path`` as the encoder must see it."""
        with Image.open(path) as im:
            im.load()
            if self.codec == "as_stored":
                return im.convert("RGB")
            return self.apply(im)

    def apply(self, image: Image.Image) -> Image.Image:
        """Steps 2–4 on a decoded image (step 1's orientation included)."""
        image = to_rgb(image)
        image = downscale(image, self.max_short_side, self.resample)
        if self.codec == "jpeg":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=self.quality)
            buf.seek(0)
            with Image.open(buf) as decoded:
                decoded.load()
                return decoded.convert("RGB")
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; RGB, with any transparency composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P") and (image.mode != "P" or "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def downscale(image: Image.Image, max_short_side: int | None, resample: str) -> Image.Image:
    """Shorter side at most ``max_short_side`` (aspect kept); never upscaled or cropped."""
    short = min(image.size)
    if not max_short_side or short <= max_short_side:
        return image
    scale = max_short_side / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, _RESAMPLE[resample])


def estimate_jpeg_quality(path: str | Path) -> int | None:
    """The IJG quality a JPEG was saved at, from its luminance table; None if not a JPEG."""
    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None)
    except Exception:  # noqa: BLE001 - an unreadable file has no quality
        return None
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * float(np.sum(tables[0])) / _IJG_LUMA_SUM
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


def resolve_policy(spec: ImagesSpec, real_paths: Iterable[str | Path] = ()) -> ImagePolicy:
    """The run's image policy; ``quality: match_real`` becomes the median estimated quality of
    the real JPEGs in ``real_paths`` (75, PIL's default, when none is a JPEG)."""
    if spec.quality != "match_real":
        return ImagePolicy(spec.codec, int(spec.quality), spec.max_short_side, spec.resample)
    found = [q for q in (estimate_jpeg_quality(p) for p in real_paths) if q is not None]
    quality = int(np.median(found)) if found else 75
    return ImagePolicy(spec.codec, quality, spec.max_short_side, spec.resample, "match_real")


def policy_of_run(spec: ImagesSpec, real_dir: Path) -> ImagePolicy:
    """The policy of a run whose real set lies in ``real_dir`` (its manifest names the files)."""
    if spec.quality != "match_real":
        return resolve_policy(spec)
    from blindspot_assets.store.images import ok_rows, read_manifest

    paths = ok_rows(read_manifest(real_dir))["path"].to_list()
    return resolve_policy(spec, (real_dir / p for p in paths))

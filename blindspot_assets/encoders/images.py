"""One image pipeline for both sides: how every image, real or generated, reaches the encoder.

The encoder sees file formats. Real training images are JPEG of every quality; diffusers writes
lossless PNG. With one side JPEG and the other PNG, a generative model with no blindspot at all
gets concepts flagged, because the SAE has concepts for compression artefacts. And one common
JPEG pass does not equalise the two: a real image has been through its own encode before the
pipeline's pass, a generated PNG has not. So no image is encoded as it lies on disk:

1. decode (any format PIL reads) and apply the EXIF orientation;
2. colour: RGB, transparency composited over white;
3. history (generated images only, ``history: match_real``, the default): the JPEG encode its
   paired real file went through — that file's own quantisation tables and chroma subsampling,
   at that file's size (``JpegHistory``); a real file stored losslessly gives none;
4. resize: downscaled so the shorter side is at most ``max_short_side`` (one filter), never
   upscaled and never cropped (the encoder's own processor resizes and crops after this);
5. codec, the common pass: an in-memory round trip through JPEG at ``quality`` (the authors
   stored both sides as JPEG at PIL's default quality 75), or none (``png``), or ``as_stored``
   (steps 1–5 are skipped: only for measuring the artefact).

The policy is part of the feature store's fingerprint and of every lineage record; the history
each generated image received is recorded per image (table ``image_history``).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageOps, JpegImagePlugin

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
    history: str = "match_real"  # match_real | none: step 3 for generated images

    def lineage(self) -> dict[str, Any]:
        return {f"images_{k}": v for k, v in asdict(self).items()}

    def load(self, path: str | Path, history: JpegHistory | None = None) -> Image.Image:
        """The image at ``path`` as the encoder must see it; ``history``: the JPEG encode to
        give it first (a generated image's paired real file's, when the policy matches it)."""
        with Image.open(path) as im:
            im.load()
            if self.codec == "as_stored":
                return im.convert("RGB")
            return self.apply(im, history if self.history == "match_real" else None)

    def apply(self, image: Image.Image, history: JpegHistory | None = None) -> Image.Image:
        """Steps 2–5 on a decoded image (step 1's orientation included)."""
        image = to_rgb(image)
        if history is not None:
            image = history.apply(image)
        image = downscale(image, self.max_short_side, self.resample)
        if self.codec == "jpeg":
            return _jpeg_round_trip(image, quality=self.quality)
        return image


def _jpeg_round_trip(image: Image.Image, **save: Any) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save)
    buf.seek(0)
    with Image.open(buf) as decoded:
        decoded.load()
        return decoded.convert("RGB")


_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class JpegHistory:
    """The JPEG encode a real file went through: its quantisation tables, chroma subsampling
    and size. Given to the generated image of the same caption, it reproduces the file's
    history on that image (at the file's scale: the image is resized to the file's shorter
    side first, so the 8 × 8 blocks cover the same share of the scene)."""

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int  # PIL's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    short_side: int
    quality: int  # the IJG quality the luminance table corresponds to (for the record)

    def describe(self) -> str:
        sub = _SUBSAMPLING.get(self.subsampling, "keep")
        return f"jpeg q{self.quality} {sub} short side {self.short_side}"

    def apply(self, image: Image.Image) -> Image.Image:
        if min(image.size) != self.short_side:
            scale = self.short_side / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        tables = [list(t) for t in self.qtables]
        sub = self.subsampling if self.subsampling in _SUBSAMPLING else 2
        return _jpeg_round_trip(image, qtables=tables, subsampling=sub)


def read_history(path: str | Path) -> JpegHistory | None:
    """The JPEG history of a real file, from its header alone; None for a file stored
    losslessly (PNG, lossless WebP, ...) or unreadable."""
    try:
        with Image.open(path) as im:
            if not isinstance(im, JpegImagePlugin.JpegImageFile) or not im.quantization:
                return None
            tables = tuple(
                tuple(int(v) for v in im.quantization[k]) for k in sorted(im.quantization)
            )
            return JpegHistory(
                tables, JpegImagePlugin.get_sampling(im), min(im.size), _quality_of(tables[0])
            )
    except Exception:  # noqa: BLE001 - an unreadable file has no history to give
        return None


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
    history = read_history(path)
    return None if history is None else history.quality


def _quality_of(luma_table: tuple[int, ...]) -> int:
    scale = 100.0 * float(sum(luma_table)) / _IJG_LUMA_SUM
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


def resolve_policy(spec: ImagesSpec, real_paths: Iterable[str | Path] = ()) -> ImagePolicy:
    """The run's image policy; ``quality: match_real`` becomes the median estimated quality of
    the real JPEGs in ``real_paths`` (75, PIL's default, when none is a JPEG)."""
    if spec.quality != "match_real":
        return ImagePolicy(
            spec.codec, int(spec.quality), spec.max_short_side, spec.resample,
            history=spec.history,
        )  # fmt: skip
    found = [q for q in (estimate_jpeg_quality(p) for p in real_paths) if q is not None]
    quality = int(np.median(found)) if found else 75
    return ImagePolicy(
        spec.codec, quality, spec.max_short_side, spec.resample, "match_real", spec.history
    )


def policy_of_run(spec: ImagesSpec, real_dir: Path) -> ImagePolicy:
    """The policy of a run whose real set lies in ``real_dir`` (its manifest names the files)."""
    if spec.quality != "match_real":
        return resolve_policy(spec)
    from blindspot_assets.store.images import ok_rows, read_manifest

    paths = ok_rows(read_manifest(real_dir))["path"].to_list()
    return resolve_policy(spec, (real_dir / p for p in paths))


def generated_histories(spec: ImagesSpec, real_dir: Path) -> dict[str, JpegHistory | None] | None:
    """What each generated image receives before the common pass, by the id of its real image:
    the real file's JPEG history (``history: match_real``), or None when the policy gives none
    (``history: none``, ``codec: as_stored``)."""
    if spec.history != "match_real" or spec.codec == "as_stored":
        return None
    return real_histories(real_dir)


def real_histories(real_dir: Path) -> dict[str, JpegHistory | None]:
    """image id → the JPEG history of each usable real image (None: stored losslessly)."""
    from blindspot_assets.store.images import ok_rows, read_manifest

    rows = ok_rows(read_manifest(real_dir))
    return {
        image_id: read_history(real_dir / path)
        for image_id, path in zip(rows["image_id"], rows["path"], strict=True)
    }


def sample_histories(
    histories: Mapping[str, JpegHistory | None], manifest: pl.DataFrame
) -> dict[str, JpegHistory | None]:
    """``histories`` (real image id → history) keyed by the generated images of ``manifest``
    as well: every sample of a caption receives the history of the caption's real file."""
    from blindspot_assets.store.images import caption_ids

    out = dict(histories)
    for image_id, caption_id in zip(manifest["image_id"], caption_ids(manifest), strict=True):
        if image_id != caption_id and caption_id in histories:
            out[str(image_id)] = histories[caption_id]
    return out


def history_table(
    manifest: pl.DataFrame, histories: Mapping[str, JpegHistory | None] | None, model_key: str
) -> pl.DataFrame:
    """Per generated image, the history it received before the common pass (table
    ``image_history``): ``history_applied`` is ``none`` when its real file was stored
    losslessly or the policy gives no history."""
    ids = manifest["image_id"].to_list()
    given = histories or {}
    applied = [h.describe() if (h := given.get(i)) else "none" for i in ids]
    return pl.DataFrame(
        {"model_key": model_key, "image_id": ids, "history_applied": applied},
        schema_overrides={"image_id": pl.Utf8},
    )

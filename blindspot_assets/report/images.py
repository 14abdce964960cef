"""Images beside the report: thumbnails, and concept heat maps drawn over what the encoder saw.

A concept's token activation comes from the codes row store (``token_idx`` / ``token_val``, the
top ``k_max`` active concepts of every token). Tokens are laid out as the encoder emits them:
[CLS, registers…, grid × grid patches]; only the patches have a place in the image. The encoder
looks at a centre crop (its processor resizes the short side, then crops: ``crop_fraction`` of
the short side, recorded with the features, ``encoders/geometry.py``), so heat maps are drawn
over that same crop and line up with the patches.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray
from PIL import Image

from blindspot_assets.store.images import MANIFEST
from blindspot_assets.store.layout import DataLayout, TokenLayout
from blindspot_assets.store.rowstore import RowStore

U8 = NDArray[np.uint8]
F32 = NDArray[np.float32]

# A perceptually ordered dark→bright ramp (after matplotlib's "inferno"), for heat overlays.
_RAMP = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _lut(n: int = 256) -> U8:
    pos = np.linspace(0, len(_RAMP) - 1, n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    frac = (pos - lo)[:, None]
    return np.asarray(_RAMP[lo] * (1 - frac) + _RAMP[hi] * frac, dtype=np.float32).astype(np.uint8)


LUT = _lut()


def concept_maps(
    codes_path: str | Path,
    wanted: Mapping[str, Iterable[int]],
    layout: TokenLayout | None = None,
    batch_rows: int = 256,
) -> dict[tuple[str, int], F32]:
    """Patch-grid activation maps ``(grid, grid)`` of the wanted (image_id → concepts).

    Reads only the rows asked for, ``batch_rows`` at a time (Zarr orthogonal indexing reads
    each chunk once per batch). Images missing from the store or invalid there are skipped.
    """
    store = RowStore.open(codes_path)
    idx_arr, val_arr = store.array("token_idx"), store.array("token_val")
    n_tokens = int(idx_arr.shape[1])
    layout = layout or TokenLayout.infer(n_tokens)
    if layout.n_tokens != n_tokens:
        raise ValueError(f"token layout has {layout.n_tokens} tokens, codes have {n_tokens}")
    row_of = {image_id: i for i, image_id in enumerate(store.image_ids())}
    valid = store.valid()
    rows = sorted(
        {row_of[i] for i in wanted if i in row_of and valid[row_of[i]] and list(wanted[i])}
    )
    id_of = {row_of[i]: i for i in wanted if i in row_of}
    out: dict[tuple[str, int], F32] = {}
    g, p0 = layout.grid, layout.first_patch
    for a in range(0, len(rows), batch_rows):
        batch = np.asarray(rows[a : a + batch_rows], dtype=np.int64)
        idx = np.asarray(idx_arr.oindex[batch])[:, p0 : p0 + g * g]
        val = np.asarray(val_arr.oindex[batch], dtype=np.float32)[:, p0 : p0 + g * g]
        for j, row in enumerate(batch):
            image_id = id_of[int(row)]
            concepts = np.asarray(sorted(set(wanted[image_id])), dtype=np.int64)
            hit = idx[j][None, :, :] == concepts[:, None, None]  # (c, patches, k_max)
            act = (val[j][None] * hit).sum(axis=2)  # (c, patches)
            for c, m in zip(concepts, act, strict=True):
                out[(image_id, int(c))] = m.reshape(g, g).astype(np.float32)
    return out


class ImageSet:
    """The image files of one dataset (a manifest's ``ok`` rows), found by image id."""

    def __init__(self, set_dir: Path) -> None:
        self.dir = set_dir
        self._paths: dict[str, str] = {}
        self._captions: dict[str, str] = {}
        manifest_path = set_dir / MANIFEST
        if manifest_path.exists():
            df = pl.read_parquet(manifest_path)
            if "status" in df.columns:
                df = df.filter(pl.col("status") == "ok")
            ids = df["image_id"].cast(pl.String).to_list()
            paths = df["path"].cast(pl.String).to_list() if "path" in df.columns else []
            captions = df["caption"].cast(pl.String).to_list() if "caption" in df.columns else []
            self._paths = {i: p for i, p in zip(ids, paths, strict=False) if p}
            self._captions = dict(zip(ids, captions, strict=False))

    def path(self, image_id: str) -> Path | None:
        rel = self._paths.get(image_id)
        if not rel:
            return None
        path = self.dir / rel
        return path if path.exists() else None

    def caption(self, image_id: str) -> str:
        return self._captions.get(image_id, "") or ""

    def __len__(self) -> int:
        return len(self._paths)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(text: str) -> str:
    """A file name for an id: itself when plain, else a readable stem plus a short hash."""
    if not _SAFE.search(text) and 0 < len(text) <= 80 and not text.startswith("."):
        return text
    stem = _SAFE.sub("_", text)[:40].lstrip(".")
    return f"{stem}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def encoder_view(image: Image.Image, crop_fraction: float) -> Image.Image:
    """The centre square the encoder sees: short side × crop_fraction, centred."""
    w, h = image.size
    side = max(1, round(min(w, h) * crop_fraction))
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def overlay_heat(base: U8, heat_gg: F32, vmax: float) -> U8:
    """Blend a patch-grid heat map (upsampled bilinearly) over an RGB image array."""
    h, w = base.shape[:2]
    norm = np.clip(heat_gg / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(heat_gg)
    grid = Image.fromarray(norm.astype(np.float32), mode="F")
    up = grid.resize((w, h), Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(up, dtype=np.float32), 0.0, 1.0)
    colour = LUT[(level * 255).astype(np.uint8)].astype(np.float32)
    alpha = (0.8 * level**0.75)[..., None]
    dimmed = base.astype(np.float32) * 0.55  # dim the image so where the concept is stands out
    out = dimmed * (1 - alpha) + colour * alpha
    return np.asarray(np.clip(out, 0, 255), dtype=np.float32).astype(np.uint8)


class ImageWriter:
    """Writes thumbnails and heat-map overlays under ``out_dir/img`` and returns their paths
    relative to ``out_dir``. Each source image is decoded once."""

    def __init__(
        self,
        layout: DataLayout,
        out_dir: Path,
        thumb_px: int,
        crop_fraction: float,
        quality: int = 85,
        max_cached: int = 2048,
        write_root: Path | None = None,
    ) -> None:
        self.layout = layout
        self.out_dir = out_dir
        # where the files go (a staging folder swapped in when the report is complete); the
        # returned paths stay relative to ``out_dir``
        self.write_root = write_root or out_dir
        self.thumb_px = thumb_px
        self.crop_fraction = crop_fraction
        self.quality = quality
        self._sets: dict[str, ImageSet] = {}
        # Decoded thumbnails, least recently used dropped first (a 128 px one is ~50 KB).
        self._bases: OrderedDict[tuple[str, str, bool], U8 | None] = OrderedDict()
        self.max_cached = max_cached
        self.written = 0

    def image_set(self, dataset: str) -> ImageSet:
        if dataset not in self._sets:
            self._sets[dataset] = ImageSet(self.layout.images(dataset))
        return self._sets[dataset]

    def caption(self, dataset: str, image_id: str) -> str:
        return self.image_set(dataset).caption(image_id)

    def _base(self, dataset: str, image_id: str, crop: bool) -> U8 | None:
        key = (dataset, image_id, crop)
        if key in self._bases:
            self._bases.move_to_end(key)
        else:
            src = self.image_set(dataset).path(image_id)
            arr: U8 | None = None
            if src is not None:
                try:
                    with Image.open(src) as im:
                        img = im.convert("RGB")
                    if crop:
                        img = encoder_view(img, self.crop_fraction)
                    img.thumbnail((self.thumb_px, self.thumb_px), Image.Resampling.LANCZOS)
                    if crop and img.size[0] < self.thumb_px:  # tiny images: upscale crisply
                        img = img.resize((self.thumb_px, self.thumb_px), Image.Resampling.NEAREST)
                    arr = np.asarray(img, dtype=np.uint8)
                except OSError:
                    arr = None  # unreadable file: the report shows a placeholder
            self._bases[key] = arr
            if len(self._bases) > self.max_cached:
                self._bases.popitem(last=False)
        return self._bases[key]

    def _save(self, arr: U8, rel: str) -> str:
        dst = self.write_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(dst, quality=self.quality)
        self.written += 1
        return rel

    def thumbnail(self, dataset: str, image_id: str, crop: bool = False) -> str | None:
        rel = f"img/{safe_name(dataset)}/{safe_name(image_id)}{'-crop' if crop else ''}.jpg"
        if (self.write_root / rel).exists():
            return rel
        base = self._base(dataset, image_id, crop)
        return None if base is None else self._save(base, rel)

    def heat(
        self, dataset: str, image_id: str, concept: int, heat_gg: F32 | None, vmax: float
    ) -> str | None:
        """The encoder's view of the image with ``concept``'s activation over it."""
        base = self._base(dataset, image_id, crop=True)
        if base is None:
            return None
        if heat_gg is None or vmax <= 0 or not np.isfinite(vmax):
            return self.thumbnail(dataset, image_id, crop=True)
        rel = f"img/{safe_name(dataset)}/c{concept}/{safe_name(image_id)}.jpg"
        return self._save(overlay_heat(base, heat_gg, vmax), rel)

"""A test world shaped like a real run: JPEG photos of captioned scenes, PNG redraws.

Unlike the gentle demo world (``blindspot_assets/demo/world.py``: 96 px, four colours, a demo
source and demo generators), this world goes through the paths a real run takes:

- **real images**: ``n_pairs`` procedural scenes — coloured shapes on textured backgrounds
  (brick, stripes, dots, grass, checks, wood grain, plain), drawn at 2× and downscaled
  (anti-aliased edges), lit by a soft gradient and with sensor noise — saved as **JPEG**
  (4:2:0 chroma subsampling, PIL's default) at one quality (``real_quality=90``) or at a
  quality drawn per image from 60–95 (``real_quality="mixed"``), with a caption that names
  every object's colour and shape and the background. One colour, :data:`RARE_COLOR`, is in
  :data:`RARE_FRACTION` of the scenes only (exactly that share, rounded). They are read through
  the documented ``folder`` source (a folder plus ``manifest.csv`` with ``image_id``, ``path``,
  ``caption``).
- **models**: ``pregenerated`` families, one folder of ``<real image id>.png`` per model
  (lossless PNG, as diffusers writes), each image redrawn **from the caption alone** (parsed
  back into a scene) with new positions, jitter and noise. A model's options (a dict):

  - ``style``: true (or ``{"blur": r, "saturation": s}``): the global style every styled model
    shares — Gaussian blur of radius :data:`STYLE_BLUR` and :data:`STYLE_SATURATION` of the
    saturation (15 % less);
  - ``suppress``: colours the model cannot draw; ``suppress_mode``: ``"neutral"`` (default:
    drawn in a neutral grey instead) or ``"omit"`` (left out);
  - ``control``: true marks a faithful model as a null control in the run config;
  - ``redraw_seed``: models with the same one (default 1) share their redrawn layouts, so
    they differ only by their options;
  - ``same_layout``: true draws each caption's own photo again (same layout, lighting and
    noise) and stores it losslessly: a perfect model whose images differ from the real ones
    by the real files' JPEG history alone.

  :data:`PRESETS` has ``faithful``, ``exact``, ``styled``, ``styled_rare_gone`` and
  ``styled_common_gone``; :func:`presets` picks some by name. The built-in null control
  ``family: control`` is always registered last, as ``control-copy``.

:func:`build` writes the world and a run config (folder source, the pregenerated models, the
tiny random DINOv2-with-registers at ``encoder_size`` px, a 256-concept SAE, the project's
default ``images:`` and ``stats:``, plus ``overrides``). :func:`run_world` runs the whole graph
through the real CLI; :func:`flag_counts`, :func:`rare_concepts` and :func:`rare_ranks` read
the results. Deterministic for a given seed: a second build of the same world writes the same
bytes (and skips the images when ``world.json`` says they are already there).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[2]
FORMAT_VERSION = 1  # bump when the renderer changes: cached worlds are rebuilt

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (235, 125, 25),
    "yellow": (230, 200, 35),
    "green": (45, 155, 65),
    "blue": (40, 75, 205),
    "white": (238, 238, 232),
    "black": (35, 35, 38),
    "purple": (125, 45, 165),
}
RARE_COLOR = "purple"
RARE_FRACTION = 0.05
COMMON_COLORS = tuple(c for c in COLORS if c != RARE_COLOR)
NEUTRAL = (128, 128, 128)
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")
BACKGROUNDS = ("plain", "brick", "striped", "dotted", "grass", "checkered", "wood")
MIXED_QUALITY = (60, 95)
STYLE_BLUR = 0.7
STYLE_SATURATION = 0.85
SUPERSAMPLE = 2
DETAILS = {"coarse": (1, 2.5), "fine": (4, 6.0)}  # texture tiles, sensor noise sd

PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {"control": True},
    "exact": {"control": True, "same_layout": True},
    "styled": {"style": True},
    "styled_rare_gone": {"style": True, "suppress": [RARE_COLOR]},
    "styled_common_gone": {"style": True, "suppress": ["red"]},
}
CONTROL_COPY = "control-copy"
MODEL_OPTIONS = {"style", "suppress", "suppress_mode", "control", "redraw_seed", "same_layout"}


def presets(*names: str) -> dict[str, dict[str, Any]]:
    """The named presets as a ``models`` argument of :func:`build` (keys = preset names)."""
    return {name: dict(PRESETS[name]) for name in names}


# ---------------------------------------------------------------------------------------------
# Scenes and captions


@dataclass(frozen=True)
class Group:
    color: str
    shape: str
    count: int


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    background: str

    @property
    def colors(self) -> list[str]:
        return sorted({g.color for g in self.groups})

    @property
    def shapes(self) -> list[str]:
        return sorted({g.shape for g in self.groups})


def sample_scene(rng: np.random.Generator, rare: bool) -> Scene:
    """1–3 groups of distinct colours (one of them :data:`RARE_COLOR` when ``rare``), at most
    six objects, on a random background."""
    n_groups = int(rng.integers(1, 4))
    colors = [COMMON_COLORS[int(i)] for i in rng.choice(len(COMMON_COLORS), n_groups, False)]
    if rare:
        colors[int(rng.integers(n_groups))] = RARE_COLOR
    top = 2 if n_groups == 3 else 3
    groups = tuple(
        Group(c, SHAPES[int(rng.integers(len(SHAPES)))], int(rng.integers(1, top + 1)))
        for c in colors
    )
    return Scene(groups, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


_NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_GROUP_RE = re.compile(
    r"\b(?P<det>a|an|one|two|three)\s+(?P<color>" + "|".join(COLORS) + r")\s+"
    r"(?P<shape>" + "|".join(SHAPES) + r")s?\b"
)
_BG_RE = re.compile(r"on an? (?P<bg>" + "|".join(BACKGROUNDS) + r") background")


def caption_of(scene: Scene) -> str:
    """``"two red circles, a blue star and a purple ring on a brick background"``."""
    parts = [
        f"{_NUMBER_WORDS[g.count]} {g.color} {g.shape}{'s' if g.count > 1 else ''}"
        for g in scene.groups
    ]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"{listed} on a {scene.background} background"


def parse_caption(caption: str) -> Scene:
    """The scene a model reads from a caption (unknown words are ignored)."""
    text = caption.lower()
    groups = tuple(
        Group(m["color"], m["shape"], _WORD_NUMBERS[m["det"]]) for m in _GROUP_RE.finditer(text)
    )
    bg = _BG_RE.search(text)
    return Scene(groups, bg["bg"] if bg else "plain")


# ---------------------------------------------------------------------------------------------
# Rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]):
    """Zero-mean, unit-ish noise of ``shape`` varying over ``cells`` (rows, cols) cells."""
    small = rng.standard_normal(cells, dtype=np.float32)
    big = Image.fromarray(small, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: int) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)
    return r, g, b


def _two_tone(mask: np.ndarray, on: tuple[int, int, int], off: tuple[int, int, int]):
    """``on`` where ``mask``, else ``off``, as an image (composited in C: fast)."""
    n = mask.shape[0]
    alpha = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return Image.composite(Image.new("RGB", (n, n), on), Image.new("RGB", (n, n), off), alpha)


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


# Painters: (rng, n, yy, xx) → the background at n × n. Smooth ones are painted at half the
# supersampled size and enlarged (see SMOOTH), sharp ones at full size.
def _bg_plain(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    tints = ((228, 222, 205), (206, 208, 210), (215, 200, 172), (222, 214, 200))
    return Image.new("RGB", (n, n), _jitter(rng, tints[int(rng.integers(len(tints)))], 8))


def _bg_brick(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    h, w = n // int(rng.integers(7, 10)), n // 4
    mortar = max(2, n // 80)
    y = yy + int(rng.integers(h))
    row = y // h
    shifted = xx + (row % 2) * (w // 2) + int(rng.integers(w))
    per_row = n // w + 3
    base = np.array(_jitter(rng, (160, 72, 52), 10), np.int16)
    shades = np.clip(base + rng.integers(-18, 19, (per_row * (n // h + 2), 1)), 0, 255)
    brick = shades.astype(np.uint8)[row * per_row + shifted // w]
    brick[(y % h < mortar) | (shifted % w < mortar)] = _jitter(rng, (196, 190, 178), 6)
    return Image.fromarray(brick, "RGB")


def _bg_striped(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    period = int(rng.integers(n // 14, n // 8))
    angle = np.deg2rad([45, -45, 0, 90][int(rng.integers(4))] + rng.uniform(-8, 8))
    phase = (xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)) % period
    return _two_tone(
        phase < 0.45 * period, _jitter(rng, (88, 84, 80), 8), _jitter(rng, (226, 220, 204), 8)
    )


def _bg_dotted(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    step = int(rng.integers(n // 12, n // 8))
    row = yy // step
    dy = yy % step - step / 2
    dx = (xx + (row % 2) * step / 2) % step - step / 2
    dots = dx**2 + dy**2 < (0.24 * step) ** 2
    return _two_tone(dots, _jitter(rng, (84, 78, 72), 8), _jitter(rng, (228, 224, 212), 8))


def _bg_checkered(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    cell = n // int(rng.integers(6, 11))
    checks = ((yy // cell) + (xx // cell)) % 2 == 1
    return _two_tone(checks, _jitter(rng, (148, 158, 174), 8), _jitter(rng, (220, 222, 226), 6))


def _bg_grass(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    blades = _smooth_noise(rng, (n, n), (max(4, n // 64), n // 3))
    patches = _smooth_noise(rng, (n, n), (4, 4))
    base = np.float32(_jitter(rng, (72, 128, 50), 8))
    return _to_image(base + blades[..., None] * np.float32([22, 34, 14]) + patches[..., None] * 10)


def _bg_wood(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    period = n / rng.uniform(14, 22)
    warp = _smooth_noise(rng, (n, n), (3, 6)) * np.float32(period * 1.5)
    grain = np.sin((yy + warp) * np.float32(2 * np.pi / period))[..., None]
    base = np.float32(_jitter(rng, (150, 104, 64), 10))
    return _to_image(base * (np.float32(0.86) + np.float32(0.12) * grain))


_BACKGROUND_PAINTERS = {
    "plain": _bg_plain,
    "brick": _bg_brick,
    "striped": _bg_striped,
    "dotted": _bg_dotted,
    "grass": _bg_grass,
    "checkered": _bg_checkered,
    "wood": _bg_wood,
}
SMOOTH = {"plain", "grass", "wood"}


def _background(kind: str, s: int, rng: np.random.Generator, tiles: int = 1) -> Image.Image:
    """``tiles`` > 1: the texture painted at 1/tiles of the size and repeated, so its detail is
    that many times finer (what a photo's foliage, fabric or print has)."""
    if tiles > 1:
        tile = _background(kind, s // tiles, rng)
        return Image.fromarray(np.tile(np.asarray(tile), (tiles, tiles, 1)), "RGB")
    n = s // 2 if kind in SMOOTH else s
    axis = np.arange(n, dtype=np.int32)
    image = _BACKGROUND_PAINTERS[kind](rng, n, axis[:, None], axis[None, :])
    return image if n == s else image.resize((s, s), Image.Resampling.BICUBIC)


def _polygon(cx: float, cy: float, r: float, angle: float, radii: Sequence[float]):
    n = len(radii)
    return [
        (
            cx + r * q * np.sin(angle + 2 * np.pi * i / n),
            cy - r * q * np.cos(angle + 2 * np.pi * i / n),
        )
        for i, q in enumerate(radii)
    ]


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, xyr: tuple[int, int, int], fill, rng):
    cx, cy, r = xyr
    outline = tuple(int(c * 0.62) for c in fill)
    width = max(2, r // 14)
    angle = rng.uniform(-0.35, 0.35)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "ring":
        draw.ellipse(box, outline=outline, width=int(r * 0.42) + width)
        draw.ellipse([v + (width if i < 2 else -width) for i, v in enumerate(box)],
                     outline=fill, width=int(r * 0.42))  # fmt: skip
    else:
        radii = {
            "square": [1.35] * 4,
            "triangle": [1.15] * 3,
            "star": [1.2, 0.5] * 5,
            "diamond": [1.25, 0.8] * 2,
        }[shape]
        start = angle + (np.pi / 4 if shape == "square" else 0.0)
        draw.polygon(_polygon(cx, cy, r, start, radii), fill=fill, outline=outline, width=width)


def _place(rng: np.random.Generator, s: int, placed: list[tuple[int, int, int]]):
    """A centre and radius, keeping clear of the objects already placed where it can."""
    for _ in range(40):
        r = int(rng.integers(s // 13, s // 7))
        cx, cy = (int(v) for v in rng.integers(r + s // 40, s - r - s // 40, 2))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (0.95 * (r + q)) ** 2 for x, y, q in placed):
            break
    return cx, cy, r


_NOISE_BANK: list[np.ndarray] = []


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit Gaussian noise (n, n, 3): a random window of one fixed seeded tile (drawing fresh
    Gaussian noise per image costs more than the rest of a render)."""
    if not _NOISE_BANK or _NOISE_BANK[0].shape[0] < 2 * n:
        tile = np.random.default_rng(20_240_601).standard_normal((2 * n, 2 * n, 3), np.float32)
        _NOISE_BANK[:] = [tile]
    tile = _NOISE_BANK[0]
    oy, ox = (int(v) for v in rng.integers(0, tile.shape[0] - n, 2))
    window = tile[oy : oy + n, ox : ox + n]
    return window[::-1] if rng.random() < 0.5 else window


def _finish(image: Image.Image, rng: np.random.Generator, noise_sd: float = 2.5) -> Image.Image:
    """Lighting (a soft gradient, exposure) and sensor noise: what makes a render a photo."""
    arr = np.asarray(image, dtype=np.float32)
    n = arr.shape[0]
    t = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(angle)) * t[None, :] + np.float32(np.sin(angle)) * t[:, None]
    gain = np.float32(rng.uniform(0.92, 1.06)) * (1 + np.float32(rng.uniform(0.03, 0.09)) * ramp)
    noise = _noise(rng, n) * np.float32(noise_sd)
    arr = arr * gain[..., None] + noise + np.float32(0.5)
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "RGB")


def render(
    scene: Scene,
    seed: Sequence[int] | int,
    size: int = 256,
    suppress: Sequence[str] = (),
    suppress_mode: str = "neutral",
    detail: str = "coarse",
) -> Image.Image:
    """One photo of ``scene``; ``seed`` moves the objects and draws jitter, lighting and noise.
    Colours in ``suppress`` are drawn in :data:`NEUTRAL` grey (``"neutral"``) or left out.
    ``detail``: "coarse" textures, or "fine" (textures 4× finer and stronger sensor noise:
    what a JPEG encode visibly changes)."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {sorted(DETAILS)}, got {detail!r}")
    tiles, noise_sd = DETAILS[detail]
    rng = np.random.default_rng(seed)
    s = size * SUPERSAMPLE
    img = _background(scene.background, s, rng, tiles)
    draw = ImageDraw.Draw(img)
    placed: list[tuple[int, int, int]] = []
    for group in scene.groups:
        for _ in range(group.count):
            xyr = _place(rng, s, placed)
            placed.append(xyr)
            gone = group.color in suppress
            if gone and suppress_mode == "omit":
                continue
            fill = _jitter(rng, NEUTRAL if gone else COLORS[group.color], 12)
            _draw_object(draw, group.shape, xyr, fill, rng)
    return _finish(img.reduce(SUPERSAMPLE), rng, noise_sd)


def apply_style(image: Image.Image, style: Any) -> Image.Image:
    """The styled models' shared look: a slight blur, then less saturation."""
    if not style:
        return image
    opts = style if isinstance(style, Mapping) else {}
    blurred = image.filter(ImageFilter.GaussianBlur(float(opts.get("blur", STYLE_BLUR))))
    return ImageEnhance.Color(blurred).enhance(float(opts.get("saturation", STYLE_SATURATION)))


# ---------------------------------------------------------------------------------------------
# Building the world


@dataclass(frozen=True)
class _Job:
    """What a worker writes: the real photo and every model's redraw of rows [lo, hi)."""

    root: str
    lo: int
    hi: int
    size: int
    seed: int
    qualities: tuple[int, ...]
    captions: tuple[str, ...]
    scene_seeds: tuple[int, ...]
    detail: str
    models: tuple[tuple[str, str], ...]  # (name, options as JSON)


def image_id(i: int) -> str:
    return f"photo-{i:06d}"


def _write_rows(job: _Job) -> None:
    root = Path(job.root)
    models = [(name, json.loads(opts)) for name, opts in job.models]
    for i in range(job.lo, job.hi):
        k = i - job.lo
        scene = parse_caption(job.captions[k])
        real = render(scene, [job.seed, 0, job.scene_seeds[k]], job.size, detail=job.detail)
        real.save(root / "real" / f"{image_id(i)}.jpg", format="JPEG", quality=job.qualities[k])
        for name, opts in models:
            redraw = [job.seed, 1, int(opts.get("redraw_seed", 1)), i]
            if opts.get("same_layout"):  # the caption's own photo, drawn again losslessly
                redraw = [job.seed, 0, job.scene_seeds[k]]
            image = render(
                scene,
                redraw,
                job.size,
                suppress=tuple(opts.get("suppress", ())),
                suppress_mode=str(opts.get("suppress_mode", "neutral")),
                detail=job.detail,
            )
            image = apply_style(image, opts.get("style"))
            image.save(
                root / "models" / name / f"{image_id(i)}.png", format="PNG", compress_level=1
            )


def _check_models(models: Mapping[str, Mapping[str, Any]]) -> None:
    for name, opts in models.items():
        if name == CONTROL_COPY:
            raise ValueError(f"{CONTROL_COPY} is registered by build itself; rename the model")
        unknown = sorted(set(opts) - MODEL_OPTIONS)
        if unknown:
            raise ValueError(
                f"model {name}: unknown option(s) {unknown}; known {sorted(MODEL_OPTIONS)}"
            )
        bad = sorted(set(opts.get("suppress", ())) - set(COLORS))
        if bad:
            raise ValueError(f"model {name}: unknown colour(s) {bad}; known {list(COLORS)}")
        if opts.get("suppress_mode", "neutral") not in ("neutral", "omit"):
            raise ValueError(f"model {name}: suppress_mode must be neutral or omit")


def sample_world(n_pairs: int, seed: int, real_quality: int | str) -> pl.DataFrame:
    """The world's truth, one row per real image: ``image_id``, ``caption``, ``colors``,
    ``shapes``, ``background``, ``rare`` (has :data:`RARE_COLOR`), ``quality``, ``scene_seed``."""
    rng = np.random.default_rng([seed, 7])
    rare = np.zeros(n_pairs, bool)
    rare[rng.choice(n_pairs, round(RARE_FRACTION * n_pairs), replace=False)] = True
    if real_quality == "mixed":
        qualities = rng.integers(MIXED_QUALITY[0], MIXED_QUALITY[1] + 1, n_pairs)
    elif isinstance(real_quality, int) and 1 <= real_quality <= 95:
        qualities = np.full(n_pairs, real_quality)
    else:
        raise ValueError(f"real_quality must be 1..95 or 'mixed', got {real_quality!r}")
    rows = []
    for i in range(n_pairs):
        scene = sample_scene(rng, bool(rare[i]))
        rows.append(
            {"image_id": image_id(i), "caption": caption_of(scene), "colors": scene.colors,
             "shapes": scene.shapes, "background": scene.background, "rare": bool(rare[i]),
             "quality": int(qualities[i]), "scene_seed": int(rng.integers(2**31 - 1))}
        )  # fmt: skip
    return pl.DataFrame(rows)


def _write_images(
    root: Path, truth: pl.DataFrame, size: int, seed: int, models, workers: int, detail: str
):
    for folder in [root / "real", *(root / "models" / m for m in models)]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    n = truth.height
    step = max(1, -(-n // (workers * 4)))
    jobs = [
        _Job(str(root), lo, min(lo + step, n), size, seed,
             tuple(truth["quality"][lo : lo + step]), tuple(truth["caption"][lo : lo + step]),
             tuple(truth["scene_seed"][lo : lo + step]), detail,
             tuple((m, json.dumps(o, sort_keys=True)) for m, o in models.items()))
        for lo in range(0, n, step)
    ]  # fmt: skip
    if workers <= 1:
        for job in jobs:
            _write_rows(job)
        return
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(_write_rows, jobs))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def run_config(
    root: Path, models: Mapping[str, Mapping[str, Any]], seed: int, n_concepts: int,
    encoder_size: int,
) -> dict[str, Any]:  # fmt: skip
    """The run config of a world built under ``root`` (before overrides)."""
    entries: dict[str, Any] = {}
    for name, opts in models.items():
        entries[name] = {
            "family": "pregenerated",
            "path": str(root / "models" / name),
            "model": f"photo world: {json.dumps(dict(opts), sort_keys=True)}",
        }
        if opts.get("control"):
            entries[name]["control"] = True
    entries[CONTROL_COPY] = {"family": "control"}
    return {
        "name": "photo-world",
        "data_root": str(root / "data"),
        "seed": seed,
        "real": {"kind": "folder", "path": str(root / "real"), "manifest": "manifest.csv"},
        "models": entries,
        "encoder": {
            "model_id": str(root / "encoder" / f"tiny-dinov2-with-registers-{encoder_size}"),
            "image_size": encoder_size,
            "batch_size": 32,
            "init_random_tiny": True,
        },
        "sae": {
            "n_concepts": n_concepts,
            "n_candidates": 4 * n_concepts,
            "sparsity": "batchtopk",
            "k": 8,
            "epochs": 4,
            "kmeans_tokens": 1 << 19,  # ~3 passes over 800 images' tokens (default: 2M)
            "batch_size": 1024,
            "lr": 0.003,
            "k_max_store": 16,
        },
    }


def build(
    root: Path,
    *,
    n_pairs: int = 800,
    size: int = 256,
    real_quality: int | str = 90,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    n_concepts: int = 256,
    encoder_size: int = 112,
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    config_name: str = "run.yaml",
    detail: str = "coarse",
) -> Path:
    """Write the world under ``root`` — ``real/`` (JPEGs + ``manifest.csv``), ``models/<name>/``
    (PNGs), ``world.json`` (the settings) and ``truth.parquet`` (see :func:`sample_world`) — and
    return the path of its run config ``root/<config_name>`` (``overrides`` merged into it,
    mapping into mapping; e.g. ``{"images": {"codec": "as_stored"}}``, or ``{"data_root": ...}``
    for a second run of one world). ``models``: name → options (module doc); default
    ``{"faithful": ...}``. ``workers``: render processes (default: up to 2). Images already
    written with the same settings are kept (``world.json``); the config is always rewritten."""
    root = Path(root).resolve()
    models = {k: dict(v) for k, v in (models or presets("faithful")).items()}
    _check_models(models)
    settings = {"format": FORMAT_VERSION, "n_pairs": n_pairs, "size": size,
                "real_quality": real_quality, "models": models, "seed": seed,
                "detail": detail}  # fmt: skip
    stamp = root / "world.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != settings:
        stamp.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        truth = sample_world(n_pairs, seed, real_quality)
        workers = workers or min(2, os.cpu_count() or 1)
        _write_images(root, truth, size, seed, models, workers, detail)
        with (root / "real" / "manifest.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["image_id", "path", "caption"])
            for iid, caption in truth.select("image_id", "caption").iter_rows():
                out.writerow([iid, f"{iid}.jpg", caption])
        truth.write_parquet(root / "truth.parquet")
        stamp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    raw = _merge(run_config(root, models, seed, n_concepts, encoder_size), overrides or {})
    config = root / config_name
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config


def truth_of(root: Path) -> pl.DataFrame:
    """The world's truth table (:func:`sample_world`) of a world built under ``root``."""
    return pl.read_parquet(Path(root) / "truth.parquet")


# ---------------------------------------------------------------------------------------------
# Running the whole graph and reading the results


def model_keys(config: Path) -> list[str]:
    """The config's model keys in registry order (the partition range runs first → last)."""
    return [str(k) for k in yaml.safe_load(Path(config).read_text())["models"]]


def run_world(config: Path, home: Path, timeout: float = 1800.0, log: Path | None = None) -> float:
    """Run ``blindspot_job`` over every model through the real CLI (``dagster job execute``,
    in-process executor, the partition range first → last model, as ``./run demo``), with
    ``DAGSTER_HOME=home`` (created, with the project's dagster.yaml, if missing). Returns the
    wall seconds; raises with the output's tail when the command fails. The whole output is
    written to ``log`` (default ``home/run.log``)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    keys = model_keys(config)
    tags = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}  # fmt: skip
    cmd = [str(Path(sys.executable).parent / "dagster"), "job", "execute",
           "-m", "blindspot_assets.definitions", "-j", "blindspot_job",
           "-c", str(REPO / "configs" / "in_process.yaml"), "--tags", json.dumps(tags)]  # fmt: skip
    env = {**os.environ, "DAGSTER_HOME": str(home), "BLINDSPOT_CONFIG": str(Path(config).resolve()),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore::UserWarning:transformers"}  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    (log or home / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise RuntimeError(f"dagster job execute exited {proc.returncode}:\n{tail}")
    return elapsed


def data_root(config: Path) -> Path:
    """The run's data root (``data_root`` of the config, relative to its file)."""
    from blindspot_assets.config import load_config

    return Path(load_config(config).layout.root)


def results(config: Path, sql: str) -> pl.DataFrame:
    """``sql`` on the run's results database (``<data_root>/blindspots.duckdb``)."""
    from blindspot_assets.config import load_config
    from blindspot_assets.store.tables import query

    return query(load_config(config).layout.duckdb, sql)


def flag_counts(config: Path) -> pl.DataFrame:
    """Per model (registry order): ``flagged`` (either verdict), ``significant``, ``paper``
    (the δ verdict), and the significant ones by kind."""
    counts = results(
        config,
        "SELECT model_key, count(*)::INT flagged, count_if(significant)::INT significant, "
        "count_if(paper_verdict)::INT paper, "
        "count_if(significant AND kind = 'suppressed')::INT sig_suppressed, "
        "count_if(significant AND kind = 'exaggerated')::INT sig_exaggerated "
        "FROM blindspots GROUP BY 1",
    )
    keys = pl.DataFrame({"model_key": model_keys(config)})
    return keys.join(counts, on="model_key", how="left").fill_null(0)


def rare_concepts(
    config: Path, truth: pl.DataFrame | None = None, *, min_ratio: float = 4.0,
    min_fire_rare: float = 0.25,
) -> pl.DataFrame:  # fmt: skip
    """Every concept with how concentrated its real energy is on the rare-colour scenes:
    ``ratio`` = mean ξ over the real images with :data:`RARE_COLOR` / mean ξ over the others,
    ``share`` = the rare images' part of the concept's total real energy, ``mean_rare``,
    ``mean_other``, ``fire_rare`` / ``fire_other`` (share of images where it fires), and
    ``is_rare`` (ratio ≥ ``min_ratio`` and firing on ≥ ``min_fire_rare`` of the rare images);
    sorted by ratio, largest first. Read from the real codes store (``codes/real.zarr``)."""
    from blindspot_assets.store.rowstore import RowStore

    truth = truth if truth is not None else truth_of(Path(config).parent)
    from blindspot_assets.config import load_config

    store = RowStore.open(load_config(config).layout.codes("real"))
    valid = store.valid()
    ids = np.asarray(store.image_ids())[valid]
    xi = np.asarray(store.array("xi")[...], dtype=np.float64)[valid]
    nfire = np.asarray(store.array("nfire")[...])[valid]
    rare_ids = set(truth.filter(pl.col("rare"))["image_id"].to_list())
    rare = np.array([i in rare_ids for i in ids])
    mean_rare, mean_other = xi[rare].mean(0), xi[~rare].mean(0)
    eps = 1e-9 + 1e-6 * float(xi.mean())
    ratio = (mean_rare + eps) / (mean_other + eps)
    share = xi[rare].sum(0) / np.maximum(xi.sum(0), 1e-12)
    fire_rare, fire_other = (nfire[rare] > 0).mean(0), (nfire[~rare] > 0).mean(0)
    df = pl.DataFrame({"concept": np.arange(xi.shape[1]), "ratio": ratio, "share": share,
                       "mean_rare": mean_rare, "mean_other": mean_other,
                       "fire_rare": fire_rare, "fire_other": fire_other})  # fmt: skip
    is_rare = (pl.col("ratio") >= min_ratio) & (pl.col("fire_rare") >= min_fire_rare)
    return df.with_columns(is_rare=is_rare).sort("ratio", descending=True)


def rare_ranks(config: Path, model_key: str, concepts: Sequence[int]) -> pl.DataFrame:
    """Where ``concepts`` stand among ``model_key``'s flags: per concept its ``rank`` among all
    flags, ``suppressed_rank`` among the suppressed flags (1 = first), ``kind``,
    ``significant``, ``paper_verdict``, ``delta``, ``relative``, ``effect_size``; a concept
    not flagged has null ranks (its concept_stats values are shown instead)."""
    flags = results(
        config,
        "SELECT concept, rank, kind, significant, paper_verdict, delta, relative, effect_size, "
        "row_number() OVER (PARTITION BY kind ORDER BY rank)::INT kind_rank "
        f"FROM blindspots WHERE model_key = '{model_key}'",
    )
    stats = results(
        config,
        "SELECT concept, delta delta_all, relative relative_all, effect_size effect_all, "
        f"significant significant_all FROM concept_stats WHERE model_key = '{model_key}'",
    )
    want = pl.DataFrame({"concept": [int(c) for c in concepts]}, schema={"concept": pl.Int64})
    out = want.join(flags.with_columns(pl.col("concept").cast(pl.Int64)), on="concept", how="left")
    out = out.join(stats.with_columns(pl.col("concept").cast(pl.Int64)), on="concept", how="left")
    suppressed_rank = pl.when(pl.col("kind") == "suppressed").then(pl.col("kind_rank"))
    return (
        out.with_columns(suppressed_rank=suppressed_rank)
        .drop("kind_rank")
        .sort("rank", nulls_last=True)
    )


def world_models(config: Path) -> dict[str, dict[str, Any]]:
    """The options of each model of the world behind ``config`` (``world.json``)."""
    return dict(json.loads((Path(config).parent / "world.json").read_text())["models"])


def measure(config: Path, top_rare: int = 5) -> dict[str, Any]:
    """The numbers of one finished run: per model its flag counts (:func:`flag_counts`); the
    rare colour's concepts (:func:`rare_concepts`: those passing ``is_rare``, at least the
    ``top_rare`` most concentrated); and, for every model that suppresses the rare colour,
    where those concepts stand among its flags (:func:`rare_ranks`)."""
    counts = flag_counts(config)
    rare = rare_concepts(config)
    chosen = rare.filter(pl.col("is_rare") | (pl.int_range(pl.len()) < top_rare))
    out: dict[str, Any] = {
        "flags": {r["model_key"]: r for r in counts.iter_rows(named=True)},
        "rare_concepts": chosen.to_dicts(),
        "rare_ranks": {},
    }
    for name, opts in world_models(config).items():
        if RARE_COLOR in opts.get("suppress", ()):
            ranks = rare_ranks(config, name, chosen["concept"].to_list())
            out["rare_ranks"][name] = ranks.to_dicts()
    return out

"""The demo world: a procedural scene grammar whose truth is known.

A scene is a few coloured shapes on a textured background. Real images are rendered from random
scenes and captioned from them ("two red circles and a blue square on a striped background").
Demo generative models read only the caption, parse it back into a scene and render it, except
where a planted blindspot makes them leave out a colour or a shape (suppressed) or force a
background (exaggerated). Because the truth is planted, a test can check that the method finds it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("plain", "striped", "dotted", "checkered")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
WORD_NUMBERS = {v: k for k, v in NUMBER_WORDS.items()} | {"a": 1, "an": 1}
IMAGE_SIZE = 96


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    count: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    layout_seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def attributes(self) -> dict[str, object]:
        """Attribute values a planted blindspot can name (colour, shape, background words)."""
        return {
            "colors": sorted({o.color for o in self.objects}),
            "shapes": sorted({o.shape for o in self.objects}),
            "background": self.background,
            "count": sum(o.count for o in self.objects),
        }

    def attribute_words(self) -> set[str]:
        attrs = self.attributes()
        return {*attrs["colors"], *attrs["shapes"], str(attrs["background"])}  # type: ignore[misc]


def sample_scene(rng: np.random.Generator) -> Scene:
    n_groups = int(rng.integers(1, 3))
    colors = rng.choice(len(COLORS), size=n_groups, replace=False)
    objects = tuple(
        SceneObject(
            color=list(COLORS)[int(c)],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            count=int(rng.integers(1, 3)),
        )
        for c in colors
    )
    return Scene(
        objects,
        BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        layout_seed=int(rng.integers(2**31 - 1)),
    )


def caption_of(scene: Scene) -> str:
    parts = []
    for o in scene.objects:
        noun = o.shape + ("s" if o.count > 1 else "")
        det = "a" if o.count == 1 else NUMBER_WORDS[o.count]
        parts.append(f"{det} {o.color} {noun}")
    return f"{' and '.join(parts)} on a {scene.background} background"


_GROUP_RE = re.compile(
    r"(?P<det>a|an|one|two|three)\s+(?P<color>" + "|".join(COLORS) + r")\s+"
    r"(?P<shape>" + "|".join(SHAPES) + r")s?"
)
_BG_RE = re.compile(r"on an? (?P<bg>" + "|".join(BACKGROUNDS) + r") background")


def parse_caption(caption: str) -> Scene:
    """The caption's scene as a demo model understands it; unknown words are ignored."""
    text = caption.lower()
    objects = tuple(
        SceneObject(m["color"], m["shape"], WORD_NUMBERS[m["det"]])
        for m in _GROUP_RE.finditer(text)
    )
    bg = _BG_RE.search(text)
    return Scene(objects, bg["bg"] if bg else "plain")


def _background(draw: ImageDraw.ImageDraw, kind: str, size: int, rng: np.random.Generator) -> None:
    base = tuple(int(v) for v in (np.array([225, 222, 210]) + rng.integers(-8, 9, 3)))
    ink = (95, 85, 75)
    draw.rectangle([0, 0, size, size], fill=base)
    if kind == "striped":
        for x in range(-size, size * 2, 12):
            draw.line([(x, 0), (x + size, size)], fill=ink, width=4)
    elif kind == "dotted":
        for y in range(4, size, 10):
            for x in range(4 + (y // 10 % 2) * 5, size, 10):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=ink)
    elif kind == "checkered":
        cell = 12
        for y in range(0, size, cell):
            for x in range(0, size, cell):
                if (x // cell + y // cell) % 2:
                    draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(150, 160, 175))


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Render a scene; ``seed`` moves objects and jitters colours, nothing else."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _background(draw, scene.background, size, rng)
    for obj in scene.objects:
        for _ in range(obj.count):
            r = int(rng.integers(size // 9, size // 6))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            color = tuple(
                int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[obj.color]
            )
            box = [cx - r, cy - r, cx + r, cy + r]
            if obj.shape == "circle":
                draw.ellipse(box, fill=color)
            elif obj.shape == "square":
                draw.rectangle(box, fill=color)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return img


@dataclass(frozen=True)
class Plants:
    """A demo model's planted blindspots; values are attribute words of the world."""

    suppress_colors: tuple[str, ...] = ()
    suppress_shapes: tuple[str, ...] = ()
    exaggerate_background: str | None = None
    exaggerate_rate: float = 0.9

    def __post_init__(self) -> None:
        for c in self.suppress_colors:
            if c not in COLORS:
                raise ValueError(f"unknown colour {c!r} in suppress_colors; known: {list(COLORS)}")
        for s in self.suppress_shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r} in suppress_shapes; known: {list(SHAPES)}")
        if self.exaggerate_background not in (None, *BACKGROUNDS):
            raise ValueError(
                f"unknown background {self.exaggerate_background!r}; known: {list(BACKGROUNDS)}"
            )

    def truth(self) -> dict[str, list[str]]:
        """The planted truth as attribute words, recorded with the model's lineage."""
        return {
            "suppressed": [*self.suppress_colors, *self.suppress_shapes],
            "exaggerated": [self.exaggerate_background] if self.exaggerate_background else [],
            # A consequence of the exaggeration rather than a plant of its own.
            "implied_suppressed": ["plain"] if self.exaggerate_background else [],
        }

    def apply(self, scene: Scene, rng: np.random.Generator) -> Scene:
        objects = tuple(
            o
            for o in scene.objects
            if o.color not in self.suppress_colors and o.shape not in self.suppress_shapes
        )
        bg = scene.background
        # Over-drawing a texture: where the caption asks for a plain background, the model
        # draws its favourite texture instead. Other textures are left alone, so the plant
        # exaggerates one texture and suppresses only "plain" (recorded as implied).
        if self.exaggerate_background and bg == "plain" and rng.random() < self.exaggerate_rate:
            bg = self.exaggerate_background
        return Scene(objects, bg)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def attributes_json(scene: Scene) -> str:
    return json.dumps(scene.attributes(), sort_keys=True)

"""A synthetic paired code set with planted blindspots, shared by the stats tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedCodes:
    image_ids: list[str]
    xi_real_nc: np.ndarray
    xi_gen_nc: np.ndarray
    gone: int  # big concept absent from every generation: δ far below 0.1
    doubled: int  # concept with twice the energy in generations: δ far above 0.9
    small_gone: int  # rare, weak concept gone from generations: δ ≈ 0.5 (docs/method.md §6)
    unchanged: list[int]


def planted_codes(n: int = 400, c: int = 40, seed: int = 0) -> PlantedCodes:
    """Real ξ: concept k fires with probability p_k, Gamma(2, 3) energy when it fires.

    Generated ξ: an independent draw from the same law (the null for unchanged concepts), except
    concept 0 never fires, concept 1 fires with twice the energy, and concept 2 — a weak concept
    that fires in 15 % of images with ξ ≈ 0.1 — never fires.
    """
    rng = np.random.default_rng(seed)
    p_k = rng.uniform(0.1, 0.5, size=c)
    p_k[0], p_k[1] = 0.5, 0.5
    scale_k = np.full(c, 3.0)
    p_k[2], scale_k[2] = 0.15, 0.05

    def draw() -> np.ndarray:
        fires = rng.random((n, c)) < p_k
        return (fires * rng.gamma(2.0, scale_k, size=(n, c))).astype(np.float32)

    real, gen = draw(), draw()
    gen[:, 0] = 0.0
    gen[:, 1] *= 2.0
    gen[:, 2] = 0.0
    ids = [f"img{i:05d}" for i in range(n)]
    return PlantedCodes(ids, real, gen, 0, 1, 2, list(range(3, c)))


COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("plain", "striped", "dotted", "checkered")


@dataclass(frozen=True)
class SceneCodes:
    """Scenes with captions and attributes, and ξ whose first concepts track scene words."""

    image_ids: list[str]
    captions: list[str]
    attributes: list[str]  # JSON, as the demo manifest stores it
    xi_real_nc: np.ndarray
    xi_gen_nc: np.ndarray
    concept_of: dict[str, int]  # attribute value → the concept that encodes it


def scene_codes(n: int = 300, n_noise: int = 30, seed: int = 0) -> SceneCodes:
    """A demo-like world: each image has 1–2 coloured shapes on a background.

    Concepts 0..10 fire (Gamma energy) when their colour / shape / background is in the scene;
    the rest are noise that fires at random. The generator sees the caption and redraws ξ for
    the same scene, except that it cannot draw red (suppressed) and puts stripes everywhere
    (exaggerated).
    """
    rng = np.random.default_rng(seed)
    words = [*COLORS, *SHAPES, *BACKGROUNDS]
    concept_of = {w: i for i, w in enumerate(words)}
    c = len(words) + n_noise
    captions, attributes, scenes = [], [], []
    for _ in range(n):
        colors = sorted(rng.choice(COLORS, size=int(rng.integers(1, 3)), replace=False).tolist())
        shapes = [str(rng.choice(SHAPES)) for _ in colors]
        background = str(rng.choice(BACKGROUNDS))
        objects = " and ".join(f"a {col} {sh}" for col, sh in zip(colors, shapes, strict=True))
        captions.append(f"{objects} on a {background} background")
        attributes.append(
            json.dumps(
                {
                    "colors": colors,
                    "shapes": sorted(set(shapes)),
                    "background": background,
                    "count": len(colors),
                }
            )  # fmt: skip
        )
        scenes.append({*colors, *shapes, background})

    def draw(exclude: set[str], force: set[str]) -> np.ndarray:
        xi = np.zeros((n, c), dtype=np.float32)
        for i, scene in enumerate(scenes):
            for w in (scene - exclude) | force:
                xi[i, concept_of[w]] = rng.gamma(4.0, 2.0)
        noise = (rng.random((n, n_noise)) < 0.3) * rng.gamma(2.0, 2.0, size=(n, n_noise))
        xi[:, len(words) :] = noise
        return xi

    real = draw(set(), set())
    gen = draw({"red", *BACKGROUNDS}, {"striped"})
    ids = [f"s{i:05d}" for i in range(n)]
    return SceneCodes(ids, captions, attributes, real, gen, concept_of)

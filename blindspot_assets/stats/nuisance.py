"""The nuisance probe: a null control that sees processing asymmetry and style.

The ``control`` family returns each caption's own real image through the generated path, so it
carries the real file's history and cannot see what a faithful model writing PNG would show:
measured, it stays clean while a faithful PNG model beside real JPEGs is flagged on dozens of
concepts. The probe builds two nuisances from the real images themselves, each a faithful
"model" with a known, non-conceptual difference, and runs them through the run's own image
pipeline, encoder, SAE and verdict:

- **history**: each real image downscaled by ``probe_scale`` (which averages its own JPEG
  blocks away) is the "fresh" content X, written losslessly as a generated image; its real side
  Y is X through the real file's own JPEG encode (its quantisation tables and subsampling), the
  history a photo of that content would have. X against Y is exactly a faithful PNG model
  against real JPEGs. A policy that matches histories (``images.history: match_real``) turns X
  into Y bit for bit, so the arm flags nothing; a policy that leaves the asymmetry (``codec:
  png`` or ``as_stored``, or a common JPEG pass alone) flags what the asymmetry moves.
- **blur**: each real image under a Gaussian blur of radius ``probe_blur`` (at a shorter side
  of 512 px, scaled to each image's; a mild global
  style, as every generative model has one), against the real image itself: how much each
  concept moves under a style change alone.

Table ``nuisance_effects``: per arm and concept, the verdict's columns. The history arm is a
control (``controls_clean`` fails when it flags a concept); both arms give each concept's
sensitivity, and a flagged blindspot whose effect is within what a nuisance alone produces is
marked ``within_nuisance`` in ``blindspots``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageFilter

from blindspot_assets.encoders.images import read_history, to_rgb
from blindspot_assets.store.atomic import write_atomic
from blindspot_assets.store.images import ok_rows, read_manifest, save_png, write_manifest

ARMS = ("history", "blur")
EFFECT_COLUMNS = (
    "nuisance", "concept", "n_pairs", "effect_size", "relative", "change_lcb", "q_value",
    "significant",
)  # fmt: skip


@dataclass(frozen=True)
class ProbeSets:
    """Where one arm's images are: its generated side, and its real side (None: the run's
    own real set)."""

    generated: Path
    reference: Path | None


def probe_ids(real_dir: Path, n_images: int, seed: int) -> list[str]:
    """The real images the probe uses: up to ``n_images`` usable ones, a seeded sample."""
    ids = sorted(ok_rows(read_manifest(real_dir))["image_id"].to_list())
    if len(ids) <= n_images:
        return ids
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=n_images, replace=False).tolist())


def _fresh(image: Image.Image, scale: float) -> Image.Image:
    if scale >= 1.0:
        return image
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _radius(blur: float, image: Image.Image) -> float:
    """``blur`` is a radius at a shorter side of 512 px, scaled to the image's."""
    return blur * min(image.size) / 512.0


def write_probe_images(
    real_dir: Path, out_dir: Path, ids: list[str], scale: float, blur: float
) -> dict[str, ProbeSets]:
    """Both arms' image sets under ``out_dir`` (kept when already there: a rerun resumes)."""
    real = read_manifest(real_dir)
    paths = dict(zip(real["image_id"], real["path"], strict=True))
    captions = dict(zip(real["image_id"], real["caption"], strict=True))
    sets = {
        "history": ProbeSets(out_dir / "history" / "generated", out_dir / "history" / "reference"),
        "blur": ProbeSets(out_dir / "blur" / "generated", None),
    }
    rows: dict[tuple[str, str], list[dict[str, str]]] = {}
    for image_id in ids:
        source = real_dir / paths[image_id]
        try:
            with Image.open(source) as im:
                im.load()
                decoded = to_rgb(im)
        except (OSError, ValueError):  # a file that does not decode is left out of the probe
            continue
        history = read_history(source)
        fresh = _fresh(decoded, scale)
        made: dict[tuple[str, str], tuple[str, Callable[[Path], None]]] = {
            ("history", "generated"): (f"{image_id}.png", partial(save_png, fresh)),
            ("blur", "generated"): (
                f"{image_id}.png",
                partial(save_png, decoded.filter(ImageFilter.GaussianBlur(_radius(blur, decoded)))),
            ),
        }
        if history is None:  # stored losslessly: the fresh content is its own real side
            made["history", "reference"] = (f"{image_id}.png", partial(save_png, fresh))
        else:
            made["history", "reference"] = (
                f"{image_id}.jpg",
                partial(
                    fresh.save,
                    format="JPEG",
                    qtables=[list(t) for t in history.qtables],
                    subsampling=history.subsampling if history.subsampling in (0, 1, 2) else 2,
                ),
            )
        for (arm, side), (name, write) in made.items():
            folder = sets[arm].generated if side == "generated" else sets[arm].reference
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists():
                write_atomic(folder / name, write)
            rows.setdefault((arm, side), []).append(
                {"image_id": image_id, "path": name, "caption": captions[image_id] or "",
                 "status": "ok", "detail": ""}
            )  # fmt: skip
    for (arm, side), table in rows.items():
        folder = sets[arm].generated if side == "generated" else sets[arm].reference
        assert folder is not None
        write_manifest(folder, pl.DataFrame(table))
    return sets


def effects_frame(arm: str, stats: pl.DataFrame) -> pl.DataFrame:
    """One arm's rows of ``nuisance_effects`` from its concept statistics."""
    return stats.with_columns(nuisance=pl.lit(arm)).select(EFFECT_COLUMNS)


def mark_within_nuisance(flagged: pl.DataFrame, effects: pl.DataFrame | None) -> pl.DataFrame:
    """``within_nuisance``: a flagged concept whose |effect size| is at most what a nuisance
    alone produces for it (the largest |d_z| over the probe's arms); ``nuisance_effect_size``
    that largest |d_z|. Null when no probe ran."""
    if effects is None or effects.is_empty():
        return flagged.with_columns(
            nuisance_effect_size=pl.lit(None, dtype=pl.Float64),
            within_nuisance=pl.lit(None, dtype=pl.Boolean),
        )
    largest = effects.group_by("concept").agg(
        nuisance_effect_size=pl.col("effect_size").abs().max()
    )
    return flagged.join(largest, on="concept", how="left").with_columns(
        within_nuisance=pl.col("effect_size").abs() <= pl.col("nuisance_effect_size")
    )

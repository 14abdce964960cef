"""Make ``images_per_caption`` generated images per real caption, resumably: images already on
disk are kept, each new image is written under a temporary name and renamed, and every image
that could not be made is recorded in the manifest with its reason.

The set's rows are sample-major: first sample 0 of every usable real row (exactly the set of one
image per caption), then sample 1 of every row, and so on; sample s of image i has the id
``sample_image_id(i, s)`` and the seed ``derive_seed(model, i, base_seed, s)``.

Batches are fixed by that row order: batch ``j`` holds the rows
``[j·batch_size, (j+1)·batch_size)`` (shards cut on whole batches), whether the run is fresh,
resumed or sharded. A resume recomputes every batch that lost an image, whole, so each image is
made inside the same batch as in an uninterrupted run: on one machine with one batch size the
images are bit-identical. Another batch size or another CPU/GPU may change pixels slightly
(floating-point reductions differ), never the seeds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from blindspot_assets.generators.base import (
    PROMPT_KEYS,
    GenerationRequest,
    ImageGenerator,
    ProgressFn,
    derive_seed,
)
from blindspot_assets.store.atomic import write_atomic
from blindspot_assets.store.images import (
    clear_manifest_parts,
    merge_manifest_parts,
    model_version,
    read_lineage,
    read_manifest,
    sample_image_id,
    save_png,
    write_manifest,
    write_manifest_part,
)
from blindspot_assets.store.layout import DataLayout
from blindspot_assets.store.rowstore import split_rows
from blindspot_assets.store.versions import archive_if_replaced


@dataclass(frozen=True)
class GenerationSummary:
    n_requested: int
    n_generated: int
    n_reused: int
    n_failed: int
    seconds: float
    failures_by_reason: dict[str, int]


def _usable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any unreadable leftover is regenerated
        return False


def _prompts(image: Image.Image) -> dict[str, str | None]:
    """The prompt and negative prompt that reached the pipeline, as the generator put them on
    the image (``info``, PNG text chunks once saved); None where the generator has no prompt."""
    return {k: v if isinstance(v := image.info.get(k), str) else None for k in PROMPT_KEYS}


def _save_png(image: Image.Image, path: Path) -> None:
    text = PngInfo()
    for key, value in _prompts(image).items():
        if value is not None:
            text.add_text(key, value)
    save_png(image.convert("RGB"), path, text)


def generate_image_set(
    generator: ImageGenerator,
    model_key: str,
    real_manifest: pl.DataFrame,
    out_dir: Path,
    batch_size: int = 8,
    base_seed: int = 0,
    progress: ProgressFn | None = None,
    *,
    rows: tuple[int, int] | None = None,
    images_per_caption: int = 1,
) -> tuple[pl.DataFrame, GenerationSummary]:
    """Generate ``out_dir/<id>.png`` for every sample of every usable real row; returns
    manifest, summary.

    With ``rows``, only those rows of the set (sample-major, see the module docstring; one shard
    of ``generation_shards``) are made and their manifest is written as a part; several workers
    run shards at once and ``finish_image_set`` joins the parts.
    """
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    real_ok = sample_rows(real_manifest, images_per_caption)
    if rows is not None:
        real_ok = real_ok.slice(rows[0], rows[1] - rows[0])
    by_id, batches, reused = _plan(real_ok, model_key, base_seed, out_dir, batch_size)
    offset = rows[0] if rows is not None else 0
    if offset % max(1, batch_size):
        raise ValueError(f"rows start at {offset}, not on a batch of {batch_size}: {rows}")
    todo = [
        req
        for batch, missing in batches
        for req in batch
        if sample_image_id(req.image_id, req.sample) in missing
    ]
    done = 0
    for batch, missing in batches:
        for req, result in zip(batch, _generate_batch(generator, batch), strict=True):
            image_id = sample_image_id(req.image_id, req.sample)
            if image_id not in missing:
                continue  # kept on disk; made again only to keep the batch whole
            if isinstance(result, Exception):
                by_id[image_id].update(
                    path="", status="generation_error", detail=f"{type(result).__name__}: {result}"
                )
                continue
            write_atomic(out_dir / f"{image_id}.png", partial(_save_png, result))
            by_id[image_id].update(_prompts(result))
        done += len(missing)
        if progress:
            progress(done, len(todo))

    df = pl.DataFrame(
        list(by_id.values()),
        schema_overrides={"seed": pl.Int64, "prompt": pl.Utf8, "negative_prompt": pl.Utf8},
    )
    if images_per_caption > 1:
        df = df.with_columns(
            caption_id=real_ok["image_id"], sample=real_ok["sample"].cast(pl.Int32)
        )
    if rows is None:
        write_manifest(out_dir, df)
        clear_manifest_parts(out_dir)
    else:
        write_manifest_part(out_dir, rows, df)
    failed = df.filter(pl.col("status") != "ok")
    summary = GenerationSummary(
        n_requested=len(by_id),
        n_generated=len(todo) - failed.filter(pl.col("status") == "generation_error").height,
        n_reused=reused,
        n_failed=failed.height,
        seconds=time.perf_counter() - t0,
        failures_by_reason=dict(failed.group_by("status").len().iter_rows()),
    )
    return df, summary


def sample_rows(real_manifest: pl.DataFrame, images_per_caption: int) -> pl.DataFrame:
    """The usable real rows once per sample, sample-major, with a ``sample`` column: the rows
    of the generated set, in order."""
    if images_per_caption < 1:
        raise ValueError(f"images_per_caption must be at least 1, got {images_per_caption}")
    real_ok = real_manifest.filter(pl.col("status") == "ok")
    return pl.concat(
        [real_ok.with_columns(sample=pl.lit(s, pl.Int64)) for s in range(images_per_caption)]
    )


def _plan(
    real_ok: pl.DataFrame, model_key: str, base_seed: int, out_dir: Path, batch_size: int
) -> tuple[dict[str, dict[str, object]], list[tuple[list[GenerationRequest], set[str]]], int]:
    """Each generated image's manifest row; the fixed batches (rows ``[j·batch_size, …)`` of
    ``real_ok``, one row per sample, empty captions left out) that still miss an image, with
    the ids they miss (an image already on disk and readable is kept); and how many were kept."""
    by_id: dict[str, dict[str, object]] = {}
    batches: list[tuple[list[GenerationRequest], set[str]]] = []
    reused = 0
    size = max(1, batch_size)
    for index, (real_id, caption, sample) in enumerate(
        zip(real_ok["image_id"], real_ok["caption"], real_ok["sample"], strict=True)
    ):
        if index % size == 0:
            batches.append(([], set()))
        batch, missing = batches[-1]
        seed = derive_seed(model_key, real_id, base_seed, sample)
        image_id = sample_image_id(real_id, sample)
        row = {
            "image_id": image_id,
            "path": f"{image_id}.png",
            "caption": caption or "",
            "status": "ok",
            "detail": "",
            "seed": seed,
            "prompt": None,
            "negative_prompt": None,
        }
        by_id[image_id] = row
        if not caption or not str(caption).strip():
            row.update(path="", status="empty_caption", detail="the real image has no caption")
            continue
        batch.append(GenerationRequest(real_id, str(caption), seed, sample))
        if (out_dir / f"{image_id}.png").exists() and _usable(out_dir / f"{image_id}.png"):
            with Image.open(out_dir / f"{image_id}.png") as kept:
                row.update(_prompts(kept))
            reused += 1
        else:
            missing.add(image_id)
    return by_id, [(b, m) for b, m in batches if m], reused


def _generate_batch(
    generator: ImageGenerator, batch: list[GenerationRequest]
) -> list[Image.Image | Exception]:
    """The batch's images; when the batch fails, one by one, so one bad prompt costs one image
    (its exception stands in its place)."""
    try:
        results: list[Image.Image | Exception] = list(generator.generate(batch))
        if len(results) != len(batch):
            raise RuntimeError(f"generator returned {len(results)} images for {len(batch)}")
        return results
    except Exception:  # noqa: BLE001 - retry one by one so one bad prompt costs one image
        results = []
        for req in batch:
            try:
                results.extend(generator.generate([req]))
            except Exception as exc:  # noqa: BLE001 - recorded in the manifest
                results.append(exc)
        return results


def generation_shards(
    real_manifest: pl.DataFrame, batch_size: int, n_shards: int, images_per_caption: int = 1
) -> list[tuple[int, int]]:
    """Contiguous ranges of the set's rows (every sample of every usable real row), whole
    batches each, for ``n_shards`` workers."""
    n_ok = real_manifest.filter(pl.col("status") == "ok").height
    return split_rows(n_ok * images_per_caption, batch_size, n_shards)


def finish_image_set(
    out_dir: Path, real_manifest: pl.DataFrame, images_per_caption: int = 1
) -> pl.DataFrame:
    """Join the shard manifests of a sharded generation into the set's manifest."""
    rows = sample_rows(real_manifest, images_per_caption)
    expected = [
        sample_image_id(i, s) for i, s in zip(rows["image_id"], rows["sample"], strict=True)
    ]
    return merge_manifest_parts(out_dir, expected)


def load_generated_manifest(out_dir: Path) -> pl.DataFrame:
    return read_manifest(out_dir)


def plan_generation(
    layout: DataLayout,
    model_key: str,
    current_version: str,
    batch_size: int,
    n_shards: int,
    images_per_caption: int = 1,
) -> list[tuple[int, int]]:
    """Before a (sharded) generation: a set made by another version of the model is archived,
    never reused (``store/versions.py``); stale shard manifests are cleared; the shards' ranges."""
    out_dir = layout.generated_images(model_key)
    made_by = model_version(read_lineage(out_dir))
    archive_if_replaced(layout, model_key, made_by, current_version)
    real = read_manifest(layout.real_images)
    ranges = generation_shards(real, batch_size, n_shards, images_per_caption)
    clear_manifest_parts(out_dir, keep=ranges)  # stale plans
    return ranges

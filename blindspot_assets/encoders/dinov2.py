"""DINOv2-with-registers token features through transformers, streamed into a Zarr row store.

The same code loads ``facebook/dinov2-with-registers-base`` by hub id and a tiny local model by
path. Preprocessing is the checkpoint's own image processor (resize shortest edge 256 bicubic,
centre-crop 224, ImageNet normalisation for the released model); the features are
``last_hidden_state`` — after the final LayerNorm — with every token kept (CLS, registers,
patches).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from blindspot_assets.checkpoint_versions import resolve_checkpoint
from blindspot_assets.config import EncoderSpec
from blindspot_assets.devices import choose_device
from blindspot_assets.encoders.geometry import CROP_FRACTION, processor_crop_fraction
from blindspot_assets.encoders.images import ImagePolicy, JpegHistory
from blindspot_assets.generators.base import ProgressFn
from blindspot_assets.generators.diffusers_pipeline import choose_dtype
from blindspot_assets.store.layout import feature_arrays
from blindspot_assets.store.rowstore import RowStore


@dataclass
class DinoEncoder:
    model: torch.nn.Module
    processor: Any
    spec: EncoderSpec
    device: str
    dtype: torch.dtype
    n_tokens: int
    dim: int
    version: str
    # how every image reaches ``preprocess``: the same for real and generated sets
    images: ImagePolicy = ImagePolicy()

    def lineage(self) -> dict[str, Any]:
        return {
            "encoder_id": self.spec.model_id,
            "encoder_revision": self.spec.revision,
            "encoder_version": self.version,
            "encoder_class": type(self.model).__name__,
            "n_tokens": self.n_tokens,
            "dim": self.dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            # the part of each image the encoder sees (heat maps are drawn over it)
            CROP_FRACTION: processor_crop_fraction(self.processor.to_dict()),
            **self.images.lineage(),
        }

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """The checkpoint's own image processor: (B, 3, H, W) float32 pixel values."""
        pixels: torch.Tensor = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, T, d) float32 tokens of ``last_hidden_state``."""
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        return np.asarray(out.last_hidden_state.float().cpu().numpy(), dtype=np.float32)

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.forward(self.preprocess(images))


def load_encoder(spec: EncoderSpec, images: ImagePolicy | None = None) -> DinoEncoder:
    """The encoder of ``spec``; ``images`` is the run's image pipeline (default: JPEG q75)."""
    from transformers import AutoImageProcessor, AutoModel

    if spec.init_random_tiny and not (Path(spec.model_id) / "config.json").exists():
        from blindspot_assets.demo.encoder import save_tiny_dinov2

        save_tiny_dinov2(Path(spec.model_id), image_size=spec.image_size)
    device = choose_device(spec.device)
    dtype, _ = choose_dtype(spec.dtype, device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        processor = AutoImageProcessor.from_pretrained(spec.model_id, revision=spec.revision)
        model = AutoModel.from_pretrained(spec.model_id, revision=spec.revision, dtype=dtype)
    model = model.to(device).eval()
    cfg = model.config
    if getattr(cfg, "image_size", spec.image_size) and spec.image_size % cfg.patch_size:
        raise ValueError(
            f"encoder.image_size {spec.image_size} is not a multiple of the patch size "
            f"{cfg.patch_size} of {spec.model_id}"
        )
    crop = getattr(processor, "crop_size", None) or {}
    if crop and crop.get("height") != spec.image_size:
        raise ValueError(
            f"encoder.image_size {spec.image_size} differs from the crop size {crop} of the "
            f"image processor of {spec.model_id}; set encoder.image_size to {crop.get('height')}"
        )
    grid = spec.image_size // cfg.patch_size
    n_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0)) + grid * grid
    # the checkpoint's version as every model's is resolved: a local folder's content hash, a
    # hub id's commit from the local cache (no network call on every load)
    version = resolve_checkpoint(spec.model_id, spec.revision, online=False).data_version
    return DinoEncoder(
        model, processor, spec, device, dtype, n_tokens, cfg.hidden_size, version,
        images or ImagePolicy(),
    )  # fmt: skip


@dataclass(frozen=True)
class ExtractionSummary:
    n_rows: int
    n_valid: int
    n_computed: int
    n_invalid_by_status: dict[str, int]
    seconds: float
    images_per_s: float


def manifest_fingerprint(manifest: pl.DataFrame) -> str:
    cols = manifest.select("image_id", "path", "status")
    return hashlib.sha256(cols.write_csv().encode()).hexdigest()[:16]


@dataclass
class _Batch:
    """One block's decoded and preprocessed images, and the status of each of its rows."""

    start: int
    stop: int
    pixels: torch.Tensor | None
    where: list[int]  # rows (relative to start) that ``pixels`` holds, in order
    status: list[str]


def _prepare_block(
    encoder: DinoEncoder,
    start: int,
    stop: int,
    statuses: list[str],
    paths: list[str],
    image_dir: Path,
    histories: list[JpegHistory | None],
) -> _Batch:
    images: list[Image.Image] = []
    where: list[int] = []
    status = ["ok"] * (stop - start)
    for i in range(start, stop):
        if statuses[i] != "ok":
            status[i - start] = f"upstream_{statuses[i]}"
            continue
        try:
            images.append(encoder.images.load(image_dir / paths[i], histories[i]))
            where.append(i - start)
        except Exception as exc:  # noqa: BLE001 - recorded per row
            status[i - start] = f"decode_error: {type(exc).__name__}"
    pixels = encoder.preprocess(images) if images else None
    return _Batch(start, stop, pixels, where, status)


def _prepared_blocks(
    encoder: DinoEncoder,
    pending: list[tuple[int, int]],
    statuses: list[str],
    paths: list[str],
    image_dir: Path,
    histories: list[JpegHistory | None],
) -> Iterator[_Batch]:
    """The pending blocks in order, decoded ``decode_workers`` blocks ahead of the model.

    PIL's decode and resize release the GIL, so threads overlap decoding with the forward pass;
    at most ``2 × decode_workers`` prepared blocks wait in memory.
    """
    workers = encoder.spec.decode_workers
    if workers <= 0:
        for a, b in pending:
            yield _prepare_block(encoder, a, b, statuses, paths, image_dir, histories)
        return
    ahead: deque[Future[_Batch]] = deque()
    blocks = iter(pending)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:

        def submit_next() -> None:
            block = next(blocks, None)
            if block is not None:
                ahead.append(
                    pool.submit(
                        _prepare_block, encoder, *block, statuses, paths, image_dir, histories
                    )
                )

        for _ in range(2 * workers):
            submit_next()
        while ahead:
            batch = ahead.popleft().result()
            submit_next()
            yield batch


def extract_features(
    encoder: DinoEncoder,
    manifest: pl.DataFrame,
    image_dir: Path,
    store_path: str | Path,
    progress: ProgressFn | None = None,
    *,
    rows: tuple[int, int] | None = None,
    finish: bool = True,
    histories: Mapping[str, JpegHistory | None] | None = None,
) -> ExtractionSummary:
    """Encode every manifest row into ``store_path``; resumes an interrupted run.

    ``histories`` (generated sets): image id → the JPEG history of the paired real file, given
    to the image before the common pass when the policy matches histories (``images.py``).

    Every manifest row gets a row in the store, so nothing is lost: rows whose image is missing
    upstream, unreadable, or whose features are not finite are kept invalid with a status.

    ``rows`` restricts the work to one shard (a chunk-aligned range from
    ``RowStore.shard_ranges``) so several workers fill one store at once; the store is then
    finished by whoever calls with ``finish=True`` after every shard is done.
    """
    t0 = time.perf_counter()
    store = open_feature_store(encoder, manifest, store_path, histories)
    statuses = manifest["status"].to_list()
    paths = manifest["path"].to_list()
    given = histories or {}
    history_rows = [given.get(i) for i in manifest["image_id"].to_list()]
    pending = store.pending_blocks(rows)
    total = sum(b - a for a, b in pending)
    computed = 0
    blocks = _prepared_blocks(encoder, pending, statuses, paths, image_dir, history_rows)
    for batch in blocks:
        n = batch.stop - batch.start
        tokens = np.zeros((n, encoder.n_tokens, encoder.dim), dtype=encoder.spec.store_dtype)
        valid = np.zeros(n, dtype=bool)
        status = batch.status
        if batch.pixels is not None:
            feats = encoder.forward(batch.pixels)
            finite = np.isfinite(feats).all(axis=(1, 2))
            for j, row in enumerate(batch.where):
                if finite[j]:
                    tokens[row] = feats[j]  # cast to the store dtype
                    valid[row] = True
                else:
                    status[row] = "nonfinite_features"
        store.write_block(batch.start, {"tokens": tokens}, valid, status)
        computed += n
        if progress:
            progress(computed, total)
    seconds = time.perf_counter() - t0
    if finish and store.is_complete():
        store.finish(completed_at=time.time())
    lo, hi = rows if rows is not None else (0, store.n_rows)
    valid_rows = store.valid(rows)
    by_status: dict[str, int] = {}
    for s, v in zip(store.status(rows), valid_rows, strict=True):
        if not v:
            by_status[s] = by_status.get(s, 0) + 1
    return ExtractionSummary(
        n_rows=hi - lo,
        n_valid=int(valid_rows.sum()),
        n_computed=computed,
        n_invalid_by_status=by_status,
        seconds=seconds,
        images_per_s=computed / seconds if seconds > 0 else 0.0,
    )


def open_feature_store(
    encoder: DinoEncoder,
    manifest: pl.DataFrame,
    store_path: str | Path,
    histories: Mapping[str, JpegHistory | None] | None = None,
) -> RowStore:
    """Create, resume or (when its inputs changed, histories included) rebuild the feature
    store of a manifest."""
    ids = manifest["image_id"].to_list()
    attrs = {
        **encoder.lineage(),
        "fingerprint": json.dumps(
            [
                encoder.version,
                manifest_fingerprint(manifest),
                encoder.spec.image_size,
                encoder.images.lineage(),
                history_fingerprint(ids, histories),
            ]
        ),
        "manifest_fingerprint": manifest_fingerprint(manifest),
    }
    return RowStore.create_or_resume(
        store_path,
        ids,
        feature_arrays(encoder.n_tokens, encoder.dim, encoder.spec.store_dtype),
        attrs,
        chunk_rows=encoder.spec.batch_size,
    )


def history_fingerprint(ids: list[str], histories: Mapping[str, JpegHistory | None] | None) -> str:
    """A digest of the histories the rows receive ("" when none is given)."""
    if not histories:
        return ""
    text = "\n".join(f"{i}\t{h.describe() if (h := histories.get(i)) else '-'}" for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

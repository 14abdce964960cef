"""One image pipeline for both sides: the same picture stored as a low-quality JPEG (a real
image) and as a PNG (a generated one) must reach the encoder nearly alike; stored as is, it
does not — that difference is what flagged file formats as blindspots."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from blindspot_assets.config import EncoderSpec, ImagesSpec
from blindspot_assets.demo.world import render, sample_scene
from blindspot_assets.encoders.dinov2 import load_encoder
from blindspot_assets.encoders.images import (
    ImagePolicy,
    _quality_of,
    estimate_jpeg_quality,
    generated_histories,
    policy_of_run,
    resolve_policy,
    to_rgb,
)
from blindspot_assets.store.images import write_manifest


def _scenes(n: int = 12, size: int = 96) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [render(s, s.layout_seed, size) for s in (sample_scene(rng) for _ in range(n))]


@pytest.mark.parametrize("quality", [30, 60, 75, 90])
def test_jpeg_quality_is_estimated_from_the_file(tmp_path: Path, quality: int) -> None:
    path = tmp_path / "a.jpg"
    _scenes(1)[0].save(path, format="JPEG", quality=quality)
    assert abs(estimate_jpeg_quality(path) - quality) <= 2  # type: ignore[operator]
    _scenes(1)[0].save(tmp_path / "a.png")
    assert estimate_jpeg_quality(tmp_path / "a.png") is None


def test_jpeg_quality_is_exact_where_the_ijg_table_is_not_clamped() -> None:
    """PIL scales the IJG table at 50 by S = 200 − 2q (q ≥ 50) or 5000 / q, entries
    clamped to [1, 255]: from quality 20 to 99 no entry is clamped and the estimate is q."""
    image = Image.new("RGB", (16, 16), (120, 30, 200))
    found = {}
    for quality in range(20, 100):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        with Image.open(buf) as jpeg:
            found[quality] = _quality_of(tuple(jpeg.quantization[0]))
    assert found == {q: q for q in range(20, 100)}
    # the standard table (JPEG Annex K, Table K.1) is S = 100: q 50; S = 200: 25; S = 1000: 5
    annex_k = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24,
               40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77,
               24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95,
               98, 112, 100, 103, 99)  # fmt: skip
    assert [_quality_of(tuple(f * v for v in annex_k)) for f in (1, 2, 10, 100)] == [50, 25, 5, 1]
    assert _quality_of((0,) * 64) == 100  # S = 0: q 100, never above
    # just above S = 400 (q = 5000 / S = 12.5): q 12.499…, 12
    assert _quality_of((4 * annex_k[0] + 1, *(4 * v for v in annex_k[1:]))) == 12


def test_match_real_takes_the_median_quality_of_the_real_set(tmp_path: Path) -> None:
    paths = []
    for i, q in enumerate((40, 50, 90)):
        paths.append(tmp_path / f"{i}.jpg")
        _scenes(1)[0].save(paths[-1], format="JPEG", quality=q)
    policy = resolve_policy(ImagesSpec(quality="match_real"), paths)
    assert abs(policy.quality - 50) <= 2 and policy.quality_source == "match_real"
    assert resolve_policy(ImagesSpec(quality=60)).quality == 60


def test_the_run_policy_and_histories_come_from_the_real_set_on_disk(tmp_path: Path) -> None:
    """``policy_of_run`` reads the real set's manifest and files: the median quality of its
    usable JPEGs (90 here, not PIL's 75 nor 65 with the unusable row), and each usable image's
    own history for its generated image (none for a lossless file)."""
    files = {"a": ("a.jpg", 90, "ok"), "b": ("b.jpg", 90, "ok"), "c": ("c.jpg", 40, "ok"),
             "d": ("d.png", None, "ok"), "e": ("e.jpg", 10, "decode_error")}  # fmt: skip
    scene = _scenes(1, size=80)[0]
    for name, quality, _ in files.values():
        if quality is None:
            scene.save(tmp_path / name)
        else:
            scene.save(tmp_path / name, format="JPEG", quality=quality)
    write_manifest(
        tmp_path,
        pl.DataFrame(
            {
                "image_id": list(files),
                "path": [f[0] for f in files.values()],
                "caption": "a scene",
                "status": [f[2] for f in files.values()],
                "detail": "",
            }
        ),
    )
    policy = policy_of_run(ImagesSpec(quality="match_real"), tmp_path)
    assert abs(policy.quality - 90) <= 2 and policy.quality_source == "match_real"
    assert policy_of_run(ImagesSpec(quality=60), tmp_path).quality == 60
    histories = generated_histories(ImagesSpec(quality="match_real"), tmp_path)
    assert histories is not None and set(histories) == {"a", "b", "c", "d"}
    assert histories["d"] is None
    qualities = {k: h.quality for k, h in histories.items() if h is not None}
    assert abs(qualities["a"] - 90) <= 2 and abs(qualities["c"] - 40) <= 2
    assert histories["a"].short_side == 80  # type: ignore[union-attr]
    assert generated_histories(ImagesSpec(history="none"), tmp_path) is None


def test_orientation_alpha_and_size_are_normalised(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (1200, 600), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "t.png")
    out = ImagePolicy(codec="png", max_short_side=300).load(tmp_path / "t.png")
    assert out.mode == "RGB" and out.size == (600, 300)
    assert np.asarray(out).min() == 255  # transparency composited over white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored landscape, shown portrait
    Image.new("RGB", (80, 40), (0, 0, 200)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert ImagePolicy().load(tmp_path / "r.jpg").size == (40, 80)
    as_stored = ImagePolicy(codec="as_stored").load(tmp_path / "t.png")
    assert as_stored.size == (1200, 600)  # nothing applied: only to measure the artefact


def test_a_palette_image_is_composited_only_where_it_has_transparency() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])  # 0: red, 1: blue
    palette.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    palette.info["transparency"] = 0  # red is transparent: white over it
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_a_fixed_quality_keeps_every_other_setting() -> None:
    spec = ImagesSpec(codec="png", quality=60, max_short_side=None, resample="bicubic")
    policy = resolve_policy(replace(spec, history="none"))
    assert policy == ImagePolicy("png", 60, None, "bicubic", "config", "none")
    assert resolve_policy(spec).history == "match_real"


def test_jpeg_and_png_copies_reach_the_encoder_alike(tmp_path: Path) -> None:
    encoder_spec = EncoderSpec(
        model_id=str(tmp_path / "tiny"), image_size=64, init_random_tiny=True, device="cpu"
    )
    real_paths, gen_paths = [], []
    for i, image in enumerate(_scenes()):
        real_paths.append(tmp_path / f"real{i}.jpg")
        image.save(real_paths[-1], format="JPEG", quality=30)  # a heavily compressed original
        gen_paths.append(tmp_path / f"gen{i}.png")
        image.save(gen_paths[-1])  # the same picture, lossless, as a generator writes it

    def gap(policy: ImagePolicy) -> float:
        encoder = load_encoder(encoder_spec, policy)
        real = encoder.encode([policy.load(p) for p in real_paths])
        gen = encoder.encode([policy.load(p) for p in gen_paths])
        return float(np.linalg.norm(real - gen) / np.linalg.norm(real))

    as_stored = gap(ImagePolicy(codec="as_stored"))
    matched = gap(resolve_policy(ImagesSpec(quality="match_real"), real_paths))
    fixed = gap(ImagePolicy(codec="jpeg", quality=75))
    print(
        f"relative feature gap: as stored {as_stored:.3f}, q75 {fixed:.3f}, matched {matched:.3f}"
    )
    assert matched < 0.35 * as_stored, (matched, as_stored)
    assert matched < fixed  # the real set's own quality matches it best


def test_the_policy_is_part_of_the_feature_lineage(tmp_path: Path) -> None:
    spec = EncoderSpec(
        model_id=str(tmp_path / "tiny"), image_size=64, init_random_tiny=True, device="cpu"
    )
    lineage = load_encoder(spec, ImagePolicy(quality=60)).lineage()
    assert lineage["images_codec"] == "jpeg" and lineage["images_quality"] == 60
    assert load_encoder(spec).lineage()["images_quality"] == 75  # the default: PIL's, the paper's

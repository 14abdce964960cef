"""Pre-generated folders; checkpoint versions (local content hash, pinned, cached, unresolved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blindspot_assets.checkpoint_versions import (
    combined_data_version,
    hash_directory,
    resolve_checkpoint,
)
from blindspot_assets.config import ConfigError, ModelSpec
from blindspot_assets.generators.base import GenerationRequest
from blindspot_assets.generators.registry import build_generator, validate_model


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_pregenerated_folder_by_id_and_by_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "closed-model"
    _image(folder / "img-a.png", 10)
    _image(folder / "sub" / "img-b.jpg", 200)
    spec = ModelSpec("closed", "pregenerated", {"path": str(folder), "model": "a closed API"})
    validate_model(spec)
    gen = build_generator(spec)
    reqs = [GenerationRequest("img-a", "x", 1), GenerationRequest("img-b", "y", 2)]
    a, b = gen.generate(reqs)
    assert np.asarray(a)[0, 0, 0] == 10 and abs(int(np.asarray(b)[0, 0, 0]) - 200) < 3
    with pytest.raises(FileNotFoundError, match="img-c"):
        gen.generate([GenerationRequest("img-c", "z", 3)])
    lineage = gen.lineage()
    assert lineage["version"] == hash_directory(folder) and lineage["n_images"] == 2

    (folder / "names.csv").write_text("image_id,path\nimg-z,img-a.png\n")
    by_manifest = build_generator(
        ModelSpec("closed", "pregenerated", {"path": str(folder), "manifest": "names.csv"})
    )
    assert np.asarray(by_manifest.generate([GenerationRequest("img-z", "", 0)])[0])[0, 0, 0] == 10
    assert by_manifest.lineage()["version"] != lineage["version"]  # the folder changed


def test_pregenerated_samples_of_a_caption(tmp_path: Path) -> None:
    """With several images per caption, sample s ≥ 1 of a caption is ``<image_id>~s<s>``; a
    missing sample costs that image only."""
    import polars as pl

    from blindspot_assets.generators.runner import generate_image_set

    folder = tmp_path / "closed-model"
    for name, value in (("a", 10), ("a~s1", 20), ("b", 30)):
        _image(folder / f"{name}.png", value)
    gen = build_generator(ModelSpec("closed", "pregenerated", {"path": str(folder)}))
    real = pl.DataFrame(
        {"image_id": ["a", "b"], "path": ["", ""], "caption": ["x", "y"], "status": ["ok"] * 2,
         "detail": ["", ""]}
    )  # fmt: skip
    out = tmp_path / "set"
    manifest, summary = generate_image_set(gen, "closed", real, out, images_per_caption=2)
    status = dict(zip(manifest["image_id"], manifest["status"], strict=True))
    assert status == {"a": "ok", "b": "ok", "a~s1": "ok", "b~s1": "generation_error"}
    assert summary.failures_by_reason == {"generation_error": 1}
    assert np.asarray(Image.open(out / "a~s1.png"))[0, 0, 0] == 20


def test_pregenerated_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models.p.path: folder .*nowhere does not exist; fix"):
        validate_model(ModelSpec("p", "pregenerated", {"path": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="models.p.repo: not a field"):
        validate_model(ModelSpec("p", "pregenerated", {"path": str(tmp_path), "repo": "x/y"}))
    _image(tmp_path / "a.png", 1)
    _image(tmp_path / "d" / "a.jpg", 1)
    with pytest.raises(ConfigError, match="two images for id 'a'"):
        build_generator(ModelSpec("p", "pregenerated", {"path": str(tmp_path)}))


def test_directory_hash_is_content_and_name_sensitive(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "w.bin").write_bytes(b"abc")
    (root / "model_index.json").write_text("{}")
    first = hash_directory(root)
    (root / ".cache").mkdir()
    (root / ".cache" / "meta").write_text("download time")  # hidden: not part of the weights
    assert hash_directory(root) == first
    (root / "unet" / "w.bin").write_bytes(b"abd")
    assert hash_directory(root) != first
    (root / "unet" / "w.bin").write_bytes(b"abc")
    assert hash_directory(root) == first
    (root / "unet" / "w.bin").rename(root / "unet" / "v.bin")
    assert hash_directory(root) != first
    version = resolve_checkpoint(str(root))
    assert version.source == "local" and version.version == hash_directory(root)


def test_hub_ids_resolve_pinned_cached_or_unresolved(tmp_path: Path) -> None:
    commit = "a" * 40
    pinned = resolve_checkpoint("org/model", commit, online=False)
    assert (pinned.source, pinned.version) == ("pinned", commit)

    cache = tmp_path / "hub"
    repo_dir = cache / "models--org--model"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("b" * 40)
    (repo_dir / "snapshots" / ("b" * 40)).mkdir(parents=True)
    cached = resolve_checkpoint("org/model", "main", online=False, cache_dir=cache)
    assert (cached.source, cached.version) == ("hub_cache", "b" * 40)

    missing = resolve_checkpoint("org/other", "main", online=False, cache_dir=cache)
    assert missing.version is None and missing.source == "unresolved"
    assert missing.data_version == "unresolved:org/other@main"
    both = combined_data_version([cached, pinned])
    assert both.startswith("combined:") and both != combined_data_version([pinned, cached])

"""configs/paper.yaml parses, and the dry run names what it cannot fetch offline; a config whose
components are all here is ready."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from blindspot_assets.config import load_config, parse_config
from blindspot_assets.validate import dry_run, main
from tests.tiny_models import save_tiny_sd

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"
HUB_IDS = [
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "mhdang/dpo-sd1.5-text2image-v1",
    "stabilityai/stable-diffusion-2-1",
    "PixArt-alpha/PixArt-XL-2-1024-MS",
    "kandinsky-community/kandinsky-2-1",
    "facebook/dinov2-with-registers-base",
]


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RELAION_PARQUET", raising=False)
    return cache


def test_paper_config_is_the_papers_run() -> None:
    cfg = load_config(PAPER)
    assert cfg.real.kind == "laion_parquet" and cfg.real.params["n_images"] == 10_000
    families = {k: m.family for k, m in cfg.models.items()}
    assert families == {
        "sd15": "stable_diffusion",
        "sd15-dpo": "stable_diffusion",
        "sd21": "stable_diffusion",
        "pixart-alpha": "pixart",
        "kandinsky21": "kandinsky",
    }
    assert cfg.models["sd15-dpo"].params["unet"]["repo"] == "mhdang/dpo-sd1.5-text2image-v1"
    assert all((m.params["height"], m.params["width"]) == (512, 512) for m in cfg.models.values())
    assert cfg.encoder.model_id == "facebook/dinov2-with-registers-base"
    assert cfg.sae.model.n_concepts == 32_000 and cfg.stats.params.temperature == 0.8


def test_paper_dry_run_names_everything_it_cannot_fetch(capsys: pytest.CaptureFixture[str]) -> None:
    report = dry_run(load_config(PAPER))
    assert not report.ready and not report.with_status("invalid")
    missing = {c.component for c in report.with_status("missing")}
    assert missing == {
        "real",
        "models.sd15",
        "models.sd15-dpo",
        "models.sd21",
        "models.pixart-alpha",
        "models.kandinsky21",
        "encoder",
        "sae",
    }
    message = report.message()
    for hub_id in HUB_IDS:
        assert hub_id in message.splitlines()[-1]
    assert "RELAION_PARQUET" in message and "an environment variable in it is unset" in message
    assert main([str(PAPER)]) == 2
    assert "NOT READY" in capsys.readouterr().out


def _fake_snapshot(cache: Path, repo: str, files: dict[str, str]) -> str:
    commit = "c" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return commit


def test_a_config_whose_parts_are_here_is_ready(tmp_path: Path, empty_hub_cache: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(photos / "a.png")
    (photos / "a.txt").write_text("black")
    commit = _fake_snapshot(
        empty_hub_cache, "facebook/dinov2-with-registers-base", {"config.json": "{}"}
    )
    raw = {
        "name": "here",
        "data_root": str(tmp_path / "data"),
        "real": {"kind": "folder", "path": str(photos)},
        "models": {
            "tiny-sd": {"family": "stable_diffusion", "repo": str(save_tiny_sd(tmp_path / "sd"))},
            "elsewhere": {"family": "pregenerated", "path": str(photos)},
        },
    }
    report = dry_run(parse_config(raw), online=False)
    assert report.ready, report.message()
    assert report.message().endswith("READY: every component resolved.")
    assert commit in {c.component: c.detail for c in report.checks}["encoder"]

    # A snapshot whose download stopped half way, a pipeline of another family, a bad field:
    _fake_snapshot(
        empty_hub_cache,
        "org/half",
        {
            "model_index.json": json.dumps(
                {
                    "_class_name": "StableDiffusionPipeline",
                    "unet": ["diffusers", "UNet2DConditionModel"],
                }
            )
        },
    )
    raw["models"] = {
        "half": {"family": "stable_diffusion", "repo": "org/half"},
        "wrong": {"family": "pixart", "repo": str(tmp_path / "sd")},
        "bad": {"family": "stable_diffusion", "repo": "org/x", "dtype": "int4"},
        "gone": {"family": "pregenerated", "path": str(tmp_path / "gone")},
    }
    report = dry_run(parse_config(raw), online=False)
    by = {c.component: c for c in report.checks}
    assert by["models.half"].status == "invalid" and "unet/ component" in by["models.half"].detail
    assert (
        by["models.wrong"].status == "invalid"
        and "StableDiffusionPipeline" in by["models.wrong"].detail
    )
    assert by["models.bad"].status == "invalid" and "models.bad.dtype" in by["models.bad"].detail
    assert by["models.gone"].status == "missing"
    assert "Invalid: models.half; models.wrong; models.bad" in report.message()
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    assert main([str(config_file)]) == 1

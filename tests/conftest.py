"""Shared fixtures. No test reaches the network: hub ids fail fast offline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", message=".*torchvision.*")

REPO = Path(__file__).resolve().parent.parent


def demo_config_dict(
    tmp_path: Path,
    n_images: int = 120,
    with_controls: bool = False,
    images_per_caption: int | None = 1,
    **overrides: object,
) -> dict[str, object]:
    """The embedded demo config, pointed at ``tmp_path`` and optionally shrunk; its trust
    checks — the null control models and the replicate SAE — and the second version of demo-a
    with its comparison (``stats.compare``) only ``with_controls`` (most tests need the two
    planted models alone, and one SAE). One image per caption unless told (None: the demo's
    own ``images_per_caption``), so that worlds which do not need more stay fast."""
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    if images_per_caption is not None:
        raw["images_per_caption"] = images_per_caption
    if not with_controls:
        raw["sae"].pop("replicate_seed", None)
        raw["models"] = {
            k: m
            for k, m in raw["models"].items()
            if m["family"] != "control" and not m.get("control") and k != "demo-a-v2"
        }
        raw["stats"].pop("compare", None)
    raw["data_root"] = str(tmp_path / "data")
    raw["real"]["n_images"] = n_images
    raw["encoder"]["model_id"] = str(tmp_path / "models" / "tiny-dinov2")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def write_config(tmp_path: Path, raw: dict[str, object]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def demo_config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, demo_config_dict(tmp_path))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow (end-to-end) tests first, each module's tests in their own order.
    ``./run test`` hands whole modules to its workers (xdist's loadscope, no reordering): the
    long modules start first, so the short ones fill the gaps instead of one worker finishing a
    long module alone at the end."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)

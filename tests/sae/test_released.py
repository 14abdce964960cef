"""Importing a released overcomplete checkpoint: no code runs, our encode equals the genuine
library's, and the BatchTopK threshold θ comes from a known place or the import fails.

The fixtures under ``tests/sae/fixtures/`` were pickled by the genuine overcomplete 0.3.0, with
its eval-mode codes on fixed inputs (``make_released_fixture.py``, run in a venv of its own).
"""

from __future__ import annotations

import importlib.abc
import json
import pickle
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from blindspot_assets.config import ConfigError, load_config, parse_config
from blindspot_assets.sae import MissingThresholdError, install_pretrained, load_sae
from blindspot_assets.sae.released import (
    UnsafeCheckpointError,
    import_released_checkpoint,
    read_torch_pickle,
)

FIXTURES = Path(__file__).parent / "fixtures"
WITH_THRESHOLD = FIXTURES / "released_batchtopk.pth"
NO_THRESHOLD = FIXTURES / "released_no_threshold" / "RA-SAE-tiny.pth"
THETA_JSON = 0.42  # config.json beside NO_THRESHOLD


class _RefuseOvercomplete(importlib.abc.MetaPathFinder):
    """Records and fails any attempt to import overcomplete while the loader runs."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if name.split(".")[0] == "overcomplete":
            self.attempts.append(name)
            raise ImportError(f"test: {name} must not be imported")
        return None


@pytest.fixture
def no_overcomplete() -> Iterator[_RefuseOvercomplete]:
    guard = _RefuseOvercomplete()
    sys.meta_path.insert(0, guard)
    try:
        yield guard
    finally:
        sys.meta_path.remove(guard)


def expected(name: str) -> dict[str, torch.Tensor]:
    """What the genuine overcomplete computed in eval mode: x, z, x_hat, threshold."""
    return load_file(str(FIXTURES / f"{name}_expected.safetensors"))


def copy_release(tmp_path: Path, src: Path, with_config_json: bool) -> Path:
    dst = tmp_path / "release" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if with_config_json:
        shutil.copyfile(src.parent / "config.json", dst.parent / "config.json")
    return dst


def assert_encodes_like_overcomplete(sae_dir: Path, ref: dict[str, torch.Tensor]) -> None:
    model, _ = load_sae(sae_dir)
    with torch.no_grad():
        z = model.encode(ref["x"])
        x_hat = model.decode(z)
    assert torch.equal(z > 0, ref["z"] > 0)  # the same concepts fire on every token
    torch.testing.assert_close(z, ref["z"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_hat, ref["x_hat"], rtol=1e-5, atol=1e-5)
    fired = float((z > 0).float().sum(dim=1).mean())
    assert 1 < fired < 0.5 * z.shape[1]  # sparse, not empty: θ matters


def test_genuine_release_imports_and_encodes_like_overcomplete(
    tmp_path: Path, no_overcomplete: _RefuseOvercomplete
) -> None:
    ref = expected("released_batchtopk")
    src = copy_release(tmp_path, WITH_THRESHOLD, with_config_json=False)
    header = import_released_checkpoint(src, tmp_path / "converted")
    assert no_overcomplete.attempts == []
    assert "overcomplete" not in sys.modules
    rel = header["released"]
    assert rel["n_concepts"] == 96 and rel["d"] == 64 and rel["n_candidates"] == 80
    assert rel["source_class"] == "overcomplete.sae.batchtopk_sae.BatchTopKSAE"
    assert rel["dictionary_class"].endswith("archetypal_dictionary.RelaxedArchetypalDictionary")
    assert rel["wrapper"] == "torch.nn.parallel.data_parallel.DataParallel"
    assert rel["sparsity"] == "batchtopk" and rel["source_top_k"] == 8 * 128
    assert rel["threshold"] == pytest.approx(float(ref["threshold"]), abs=1e-7)
    assert rel["threshold_source"] == "pickled running_threshold"
    assert rel["stored_threshold"] == rel["threshold"]
    assert rel["source_training"] is False  # saved after .eval()
    assert rel["dictionary_source"].startswith("stored _fused_dictionary")
    assert rel["stored_fused_max_abs_diff"] < 1e-5  # our fusion = theirs, from W, C, Λ, m
    assert header["data_version"].startswith("released:")
    _, h2 = load_sae(tmp_path / "converted")
    assert h2 == header
    assert_encodes_like_overcomplete(tmp_path / "converted", ref)


def test_release_without_running_threshold_takes_theta_from_config_json(
    tmp_path: Path, no_overcomplete: _RefuseOvercomplete
) -> None:
    ref = expected("released_no_threshold")
    assert float(ref["threshold"]) == pytest.approx(THETA_JSON)
    src = copy_release(tmp_path, NO_THRESHOLD, with_config_json=True)
    rel = import_released_checkpoint(src, tmp_path / "converted")["released"]
    assert no_overcomplete.attempts == []
    assert rel["stored_threshold"] is None  # running_threshold = None, as the release
    assert rel["threshold"] == pytest.approx(THETA_JSON)
    assert rel["threshold_source"] == "config.json beside the checkpoint"
    assert rel["config_json_threshold"] == pytest.approx(THETA_JSON)
    assert rel["source_training"] is True  # pickled in training mode: nothing fused yet
    assert rel["dictionary_source"] == "fused from W, C, Relax, multiplier"
    assert_encodes_like_overcomplete(tmp_path / "converted", ref)


def test_the_run_config_threshold_is_used_and_wins(tmp_path: Path) -> None:
    ref = expected("released_no_threshold")
    src = copy_release(tmp_path, NO_THRESHOLD, with_config_json=False)
    rel = import_released_checkpoint(src, tmp_path / "a", threshold=THETA_JSON)["released"]
    assert rel["threshold_source"] == "run config sae.threshold"
    assert rel["config_json_threshold"] is None
    assert_encodes_like_overcomplete(tmp_path / "a", ref)

    shutil.copyfile(NO_THRESHOLD.parent / "config.json", src.parent / "config.json")
    header = import_released_checkpoint(src, tmp_path / "b", threshold=0.9)
    rel = header["released"]
    assert rel["threshold"] == 0.9 and rel["threshold_source"] == "run config sae.threshold"
    assert rel["threshold_disagreement"] == {
        "run config sae.threshold": 0.9,
        "config.json beside the checkpoint": THETA_JSON,
    }
    assert header["data_version"].endswith(":threshold=0.9")
    model, _ = load_sae(tmp_path / "b")
    with torch.no_grad():
        z = model.encode(ref["x"])
    assert float(z[z > 0].min()) >= 0.9 and (z > 0).sum() < (ref["z"] > 0).sum()


def test_a_batchtopk_release_with_no_known_threshold_fails_instead_of_topk(
    tmp_path: Path,
) -> None:
    src = copy_release(tmp_path, NO_THRESHOLD, with_config_json=False)
    with pytest.raises(MissingThresholdError, match=r"running_threshold is None.*sae\.threshold"):
        import_released_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingThresholdError, match="config.json"):
        install_pretrained(src, tmp_path / "out")
    (src.parent / "config.json").write_text(json.dumps({"model_type": "sae"}))  # no θ in it
    with pytest.raises(MissingThresholdError):
        import_released_checkpoint(src, tmp_path / "out")


def test_sae_threshold_in_the_run_config(tmp_path: Path) -> None:
    paper = load_config(Path(__file__).parents[2] / "configs" / "paper.yaml")
    assert paper.sae.threshold == 0.829 and paper.sae.model.sparsity == "batchtopk"
    raw = yaml.safe_load((Path(__file__).parents[2] / "configs" / "demo.yaml").read_text())
    with pytest.raises(ConfigError, match="set sae.pretrained"):
        parse_config({**raw, "sae": {**raw["sae"], "threshold": 0.5}}, tmp_path / "x.yaml")
    bad = {**raw["sae"], "pretrained": str(NO_THRESHOLD), "threshold": "high"}
    with pytest.raises(ConfigError, match=r"sae\.threshold must be a number or null"):
        parse_config({**raw, "sae": bad}, tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match=r"sae\.threshold must be a finite number"):
        parse_config({**raw, "sae": {**bad, "threshold": float("nan")}}, tmp_path / "x.yaml")


def test_a_checkpoint_that_runs_code_on_load_is_refused(
    tmp_path: Path, no_overcomplete: _RefuseOvercomplete
) -> None:
    class Exploit:
        def __init__(self, command: str) -> None:
            self.command = command

        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (self.command,))

    marker = tmp_path / "pwned"
    module = nn.Linear(4, 4)
    module.__dict__["payload"] = Exploit(f"touch {marker}")
    torch.save(nn.DataParallel(module), tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load.*system"):
        import_released_checkpoint(tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_other_globals_and_raw_pickles_are_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (eval, ("1+1",))

    torch.save({"x": Evil()}, tmp_path / "eval.pt")
    with pytest.raises(UnsafeCheckpointError, match="eval"):
        read_torch_pickle(tmp_path / "eval.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        import_released_checkpoint(tmp_path / "raw.pkl", tmp_path / "out")


def test_a_module_class_outside_the_allow_list_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overcomplete class the importer does not know (a newer SAE kind) is not guessed at:
    the load stops naming it, and nothing of the file is executed."""
    import sys
    import types

    fake = types.ModuleType("overcomplete.sae.jump_sae")
    for parent in ("overcomplete", "overcomplete.sae"):  # importable while it is saved
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))

    class JumpSAE(nn.Module):
        pass

    JumpSAE.__module__, JumpSAE.__qualname__ = fake.__name__, "JumpSAE"
    fake.JumpSAE = JumpSAE  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    torch.save(nn.DataParallel(JumpSAE()), tmp_path / "jump.pt")
    for name in (fake.__name__, "overcomplete.sae", "overcomplete"):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(UnsafeCheckpointError, match=r"overcomplete\.sae\.jump_sae\.JumpSAE"):
        read_torch_pickle(tmp_path / "jump.pt")


def test_pretrained_spec_takes_a_converted_dir_or_a_released_file_once(tmp_path: Path) -> None:
    src = copy_release(tmp_path, NO_THRESHOLD, with_config_json=True)
    model, header = install_pretrained(src, tmp_path / "conv")
    stamp = (tmp_path / "conv" / "model.safetensors").stat().st_mtime_ns
    again, header2 = install_pretrained(src, tmp_path / "conv")
    assert header2 == header
    assert (tmp_path / "conv" / "model.safetensors").stat().st_mtime_ns == stamp  # not redone
    from_dir, header3 = install_pretrained(tmp_path / "conv", tmp_path / "copy")  # our format
    assert {k: header3[k] for k in ("config", "released", "data_version")} == {
        k: header[k] for k in ("config", "released", "data_version")
    }
    x = expected("released_no_threshold")["x"]
    with torch.no_grad():
        assert torch.equal(model.encode(x), from_dir.encode(x))
    # another θ in the run config: converted again, not the cached θ
    _, header4 = install_pretrained(src, tmp_path / "conv", threshold=0.9)
    assert header4["released"]["threshold"] == 0.9
    with pytest.raises(ValueError, match="was converted with θ = 0.9"):
        install_pretrained(tmp_path / "conv", tmp_path / "unused", threshold=THETA_JSON)
    with pytest.raises(FileNotFoundError):
        install_pretrained(tmp_path / "missing.pt", tmp_path / "conv2")

"""Importing the released overcomplete checkpoint: no code runs, and our encode equals theirs."""

from __future__ import annotations

import importlib.abc
import pickle
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from blindspot_assets.sae import load_pretrained, load_sae
from blindspot_assets.sae.released import (
    UnsafeCheckpointError,
    import_released_checkpoint,
    read_torch_pickle,
)
from tests.sae.fake_overcomplete import MODULES, write_fake_release, write_malicious_release


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


def _tokens(n: int = 512, d: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, d, generator=g) + 0.5


def test_released_checkpoint_imports_and_encodes_like_the_original(
    tmp_path: Path, no_overcomplete: _RefuseOvercomplete
) -> None:
    x = _tokens()
    ref = write_fake_release(tmp_path / "ra_sae.pt", x, c=48, m=40, top_k=256)
    assert not any(m in sys.modules for m in MODULES)

    header = import_released_checkpoint(tmp_path / "ra_sae.pt", tmp_path / "converted")
    assert no_overcomplete.attempts == []
    assert not any(m in sys.modules for m in MODULES)
    rel = header["released"]
    assert rel["n_concepts"] == 48 and rel["d"] == 24 and rel["n_candidates"] == 40
    assert rel["sparsity"] == "batchtopk" and rel["source_top_k"] == 256
    assert rel["threshold"] == pytest.approx(float(ref["threshold"]))
    assert rel["source_class"].endswith("batchtopk_sae.BatchTopKSAE")
    assert rel["wrapper"].endswith("DataParallel")
    assert rel["stored_fused_max_abs_diff"] < 1e-5  # our fusion = theirs, from W, C, Λ, m
    assert header["data_version"].startswith("released:")

    model, h2 = load_sae(tmp_path / "converted")
    assert h2 == header
    with torch.no_grad():
        z = model.encode(x)
        x_hat = model.decode(z)
    assert torch.equal(z > 0, ref["z"] > 0)  # the same concepts fire on every token
    torch.testing.assert_close(z, ref["z"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_hat, ref["x_hat"], rtol=1e-5, atol=1e-5)
    assert 0 < float((z > 0).float().sum(dim=1).mean()) < 48


def test_a_checkpoint_that_runs_code_on_load_is_refused(
    tmp_path: Path, no_overcomplete: _RefuseOvercomplete
) -> None:
    marker = tmp_path / "pwned"
    write_malicious_release(tmp_path / "evil.pt", _tokens(16, 8), f"touch {marker}")
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


def test_pretrained_spec_takes_a_converted_dir_or_a_released_file_once(tmp_path: Path) -> None:
    write_fake_release(tmp_path / "ra_sae.pt", _tokens(256, 16), c=20, m=16, top_k=64)
    model, header = load_pretrained(tmp_path / "ra_sae.pt", tmp_path / "conv")
    stamp = (tmp_path / "conv" / "model.safetensors").stat().st_mtime_ns
    again, header2 = load_pretrained(tmp_path / "ra_sae.pt", tmp_path / "conv")
    assert header2 == header
    assert (tmp_path / "conv" / "model.safetensors").stat().st_mtime_ns == stamp  # not redone
    from_dir, header3 = load_pretrained(tmp_path / "conv", tmp_path / "unused")
    assert header3 == header and not (tmp_path / "unused").exists()
    x = _tokens(32, 16)
    with torch.no_grad():
        assert torch.equal(model.encode(x), from_dir.encode(x))
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.pt", tmp_path / "conv2")

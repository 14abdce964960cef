"""A faithful stand-in for the pickle of ``matybohacek/RA-SAE-DINOv2-32k``.

The release is ``torch.save(DataParallel(BatchTopKSAE(...)))`` from ``overcomplete``. The classes
below reproduce that library's module tree and math (MLPEncoder Linear → LayerNorm → ReLU,
RelaxedArchetypalDictionary fused on ``.eval()``, BatchTopK with a running threshold) under the
same module paths, registered in ``sys.modules`` only while the file is written and the
reference outputs are computed. The loader under test never sees them.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MODULES = (
    "overcomplete",
    "overcomplete.base",
    "overcomplete.sae",
    "overcomplete.sae.base",
    "overcomplete.sae.modules",
    "overcomplete.sae.archetypal_dictionary",
    "overcomplete.sae.batchtopk_sae",
)


def _classes() -> dict[str, dict[str, type]]:
    class BaseDictionaryLearning(nn.Module):
        def __init__(self, n_components: int, device: str = "cpu") -> None:
            super().__init__()
            self.nb_concepts = n_components
            self.device = device

    class MLPEncoder(nn.Module):
        def __init__(self, input_shape: int, n_components: int) -> None:
            super().__init__()
            self.input_size, self.n_components = input_shape, n_components
            self.hidden_dim, self.nb_blocks, self.residual = input_shape, 1, False
            self.hidden_activation, self.output_activation = nn.ReLU, nn.ReLU
            self.norm_layer = nn.LayerNorm
            self.mlp_blocks = nn.ModuleList()
            self.final_block = nn.Sequential(
                nn.Linear(input_shape, n_components), nn.LayerNorm(n_components)
            )
            self.final_activation = nn.ReLU()

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            pre = self.final_block(x)
            return pre, self.final_activation(pre)

    class RelaxedArchetypalDictionary(nn.Module):
        def __init__(
            self, in_dimensions: int, nb_concepts: int, points: Tensor, delta: float = 1.0
        ) -> None:
            super().__init__()
            self.in_dimensions, self.nb_concepts, self.delta = in_dimensions, nb_concepts, delta
            self.device = "cpu"
            self.register_buffer("C", points)
            self.nb_candidates = points.shape[0]
            self.W = nn.Parameter(torch.eye(nb_concepts, self.nb_candidates))
            self.Relax = nn.Parameter(torch.zeros(nb_concepts, in_dimensions))
            self.multiplier = nn.Parameter(torch.tensor(0.0))
            self._fused_dictionary: Tensor | None = None

        def get_dictionary(self) -> Tensor:
            if self.training:
                with torch.no_grad():
                    w = torch.relu(self.W)
                    w /= w.sum(dim=-1, keepdim=True) + 1e-8
                    self.W.data = w
                    scale = torch.clamp(self.delta / self.Relax.norm(dim=-1, keepdim=True), max=1)
                    self.Relax.data *= scale
                return (self.W @ self.C + self.Relax) * torch.exp(self.multiplier)
            assert self._fused_dictionary is not None
            return self._fused_dictionary

        def forward(self, z: Tensor) -> Tensor:
            return z @ self.get_dictionary()

        def train(self, mode: bool = True) -> Any:
            if not mode:
                self._fused_dictionary = self.get_dictionary()
            return super().train(mode)

    class SAE(BaseDictionaryLearning):
        def __init__(self, input_shape: int, nb_concepts: int, points: Tensor) -> None:
            super().__init__(nb_concepts)
            self.encoder = MLPEncoder(input_shape, nb_concepts)
            self.dictionary = RelaxedArchetypalDictionary(input_shape, nb_concepts, points)

        def decode(self, z: Tensor) -> Tensor:
            return self.dictionary(z)

    class BatchTopKSAE(SAE):
        def __init__(
            self,
            input_shape: int,
            nb_concepts: int,
            points: Tensor,
            top_k: int,
            threshold_momentum: float = 0.9,
        ) -> None:
            super().__init__(input_shape, nb_concepts, points)
            self.top_k, self.threshold_momentum = top_k, threshold_momentum
            self.running_threshold: Tensor | None = None

        def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
            pre, codes = self.encoder(x)
            if self.training:
                current = torch.topk(codes.view(-1), self.top_k).values[-1]
                if self.running_threshold is None:
                    self.running_threshold = current.detach()
                else:
                    mu = self.threshold_momentum
                    self.running_threshold = mu * self.running_threshold + (1 - mu) * current
                threshold = current
            else:
                assert self.running_threshold is not None
                threshold = self.running_threshold
            return pre, codes * (codes >= threshold).float().detach()

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            pre, z = self.encode(x)
            return pre, z, self.decode(z)

    return {
        "overcomplete.base": {"BaseDictionaryLearning": BaseDictionaryLearning},
        "overcomplete.sae.modules": {"MLPEncoder": MLPEncoder},
        "overcomplete.sae.archetypal_dictionary": {
            "RelaxedArchetypalDictionary": RelaxedArchetypalDictionary
        },
        "overcomplete.sae.base": {"SAE": SAE},
        "overcomplete.sae.batchtopk_sae": {"BatchTopKSAE": BatchTopKSAE},
    }


@contextlib.contextmanager
def fake_overcomplete() -> Iterator[dict[str, type]]:
    """The fake library in ``sys.modules`` for the duration of the block, then gone."""
    assert not any(m in sys.modules for m in MODULES), "a real overcomplete is imported"
    found: dict[str, type] = {}
    for name in MODULES:
        sys.modules[name] = types.ModuleType(name)
    try:
        for mod, classes in _classes().items():
            for cls_name, cls in classes.items():
                cls.__module__, cls.__qualname__ = mod, cls_name
                setattr(sys.modules[mod], cls_name, cls)
                found[cls_name] = cls
        yield found
    finally:
        for name in MODULES:
            sys.modules.pop(name, None)


def write_fake_release(
    path: Path, x_nd: Tensor, c: int = 48, m: int = 40, top_k: int = 256, seed: int = 0
) -> dict[str, Tensor]:
    """Train-step a small BatchTopKSAE, save it as the release was saved, and return what the
    original model computes on ``x_nd`` in eval mode (codes, reconstruction, threshold)."""
    torch.manual_seed(seed)
    d = x_nd.shape[1]
    with fake_overcomplete() as cls:
        sae = cls["BatchTopKSAE"](d, c, x_nd[torch.randperm(len(x_nd))[:m]].clone(), top_k)
        with torch.no_grad():
            sae.dictionary.W.add_(0.3 * torch.rand(c, m))
            sae.dictionary.Relax.normal_(0, 0.5)  # larger than δ: clipping must happen
            sae.dictionary.multiplier.fill_(0.2)
            sae.encoder.final_block[1].weight.uniform_(0.5, 1.5)
            sae.encoder.final_block[1].bias.normal_(0, 0.1)
        sae.train()
        with torch.no_grad():
            for i in range(0, len(x_nd), 64):  # batches of training set the running threshold
                sae(x_nd[i : i + 64])
        sae.eval()  # fuses the dictionary, as a released eval-mode model
        wrapped = nn.DataParallel(sae)
        wrapped.__dict__.update(  # as on the authors' multi-GPU machine
            {
                "device_ids": [0, 1],
                "output_device": 0,
                "dim": 0,
                "src_device_obj": torch.device("cuda", 0),
            }
        )
        with torch.no_grad():
            _, z, x_hat = sae(x_nd)
        original_tag = torch.serialization.location_tag
        torch.serialization.location_tag = lambda storage: "cuda:0"  # type: ignore[assignment]
        try:
            torch.save(wrapped, path)
        finally:
            torch.serialization.location_tag = original_tag
        assert sae.running_threshold is not None
        return {"z": z, "x_hat": x_hat, "threshold": sae.running_threshold.clone()}


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (self.command,))


def write_malicious_release(path: Path, x_nd: Tensor, command: str) -> None:
    """The fake release with an object whose unpickling runs ``command`` through os.system."""
    with fake_overcomplete() as cls:
        sae = cls["BatchTopKSAE"](x_nd.shape[1], 8, x_nd[:8].clone(), 16)
        sae.running_threshold = torch.tensor(0.5)
        sae.__dict__["payload"] = _Exploit(command)
        torch.save(nn.DataParallel(sae), path)

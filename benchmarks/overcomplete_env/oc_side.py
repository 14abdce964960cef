"""The overcomplete side of benchmarks/bench_sae.py; runs in the side venv (make_env.sh).

    python oc_side.py train  WORKDIR   # RATopKSAE + overcomplete.sae.train_sae on WORKDIR/data.npz
    python oc_side.py export WORKDIR   # a real BatchTopKSAE(RA dictionary) pickled as released

It never runs in the project's environment. PyPI's torchvision does not load beside the CPU
torch build, and ``overcomplete/__init__.py`` imports its torchvision-based model zoo, so the
package is entered through a stub parent module: only ``overcomplete.sae`` (and what it imports)
is executed, which needs no torchvision.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _import_overcomplete_sae() -> types.ModuleType:
    import importlib.util

    spec = importlib.util.find_spec("overcomplete")
    assert spec is not None and spec.submodule_search_locations, "overcomplete is not installed"
    pkg = types.ModuleType("overcomplete")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["overcomplete"] = pkg
    import overcomplete.sae as oc_sae

    return oc_sae


def train(work: Path) -> None:
    oc = _import_overcomplete_sae()
    cfg = json.loads((work / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    data = np.load(work / "data.npz")
    x_all = torch.from_numpy(data["tokens"])
    points = torch.from_numpy(data["points"])
    torch.manual_seed(cfg["seed"])
    model = oc.RATopKSAE(
        cfg["d"],
        cfg["c"],
        points=points,
        top_k=cfg["k"],
        delta=cfg["delta"],
        encoder_module="mlp_ln_1",
    )
    init = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    np.savez(work / "oc_init.npz", **init)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=0)

    def mse(x: Tensor, x_hat: Tensor, pre: Tensor, codes: Tensor, dictionary: Tensor) -> Tensor:
        return (x - x_hat).square().mean()

    B = cfg["batch"]
    batches = [(x_all[i * B : (i + 1) * B],) for i in range(x_all.shape[0] // B)]
    losses: list[float] = []
    step_seconds: list[float] = []
    for batch in batches:  # one train_sae call per batch, to time every step
        t0 = time.perf_counter()
        logs = oc.train_sae(model, [batch], mse, opt, nb_epochs=1, clip_grad=1.0, monitoring=1)
        step_seconds.append(time.perf_counter() - t0)
        losses += list(logs["step_loss"])
    out = {"step_seconds": step_seconds, "loss": losses, "torch": torch.__version__}
    (work / "oc_result.json").write_text(json.dumps(out))


def export(work: Path) -> None:
    """A genuine overcomplete BatchTopKSAE with an RA dictionary, trained a little, pickled as
    the release (DataParallel, whole modules), plus its eval-mode outputs on fixed inputs."""
    oc = _import_overcomplete_sae()
    torch.manual_seed(0)
    d, c, m = 64, 256, 200
    x = torch.randn(2048, d) + 0.3
    model = oc.BatchTopKSAE(d, c, top_k=8 * 256, encoder_module="mlp_ln_1")
    model.dictionary = oc.RelaxedArchetypalDictionary(d, c, x[:m].clone(), delta=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def mse(x: Tensor, x_hat: Tensor, pre: Tensor, codes: Tensor, dictionary: Tensor) -> Tensor:
        return (x - x_hat).square().mean()

    batches = [(x[i : i + 256],) for i in range(0, 2048, 256)]
    oc.train_sae(model, batches, mse, opt, nb_epochs=2, clip_grad=1.0, monitoring=0)
    model.eval()
    probe = torch.randn(512, d) + 0.3
    with torch.no_grad():
        _, z, x_hat = model(probe)
    torch.save(torch.nn.DataParallel(model), work / "released_like.pt")
    np.savez(
        work / "released_like_ref.npz",
        x=probe.numpy(),
        z=z.numpy(),
        x_hat=x_hat.numpy(),
        threshold=np.asarray(float(model.running_threshold)),
    )


if __name__ == "__main__":
    {"train": train, "export": export}[sys.argv[1]](Path(sys.argv[2]))

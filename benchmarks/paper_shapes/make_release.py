"""A random RA-SAE at the release's shapes, pickled by the genuine ``overcomplete`` as released.

Runs in overcomplete's own venv, never in the project's (``benchmarks/overcomplete_env``)::

    bash benchmarks/overcomplete_env/make_env.sh /tmp/oc-venv
    /tmp/oc-venv/bin/python benchmarks/paper_shapes/make_release.py OUT.pth \\
        --concepts 32000 --candidates 32000 --threshold 3.0902

It builds ``BatchTopKSAE(768, c, encoder_module="mlp_ln_1")`` with a
``RelaxedArchetypalDictionary`` over ``m`` seeded N(0, 1) candidate points (δ = 0.01), untrained,
sets ``running_threshold = None`` as the release is reported to have, and writes it as
``torch.save(DataParallel(model))`` with storages tagged ``cuda:0`` (the release's pickle), plus
the model card's ``config.json`` (with θ) beside it. The project imports it through
``sae.pretrained`` with ``torch.load(weights_only=True)`` and inert stand-ins, never running it.

θ: the encoder is Linear → LayerNorm → ReLU, so at initialisation each token's c pre-activations
are standardised (mean 0, variance 1 over concepts); θ = Φ⁻¹(1 − k/c) fires ~k per token
(3.0902 for k = 32 of 32,000).

Memory: W is c × m float32 (4.1 GB at 32k × 32k), written once; the peak is about W plus the
pickle buffer of one storage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "overcomplete_env"))
from oc_side import _import_overcomplete_sae  # noqa: E402  (overcomplete.sae, no torchvision)

from tests.sae.fixtures.make_released_fixture import _save_as_released  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--concepts", type=int, default=32000)
    ap.add_argument("--candidates", type=int, default=32000)
    ap.add_argument("--k", type=int, default=32, help="codes per token (top_k = k × 4096)")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    oc = _import_overcomplete_sae()
    torch.manual_seed(args.seed)
    points = torch.randn(args.candidates, args.d)
    model = oc.BatchTopKSAE(args.d, args.concepts, top_k=args.k * 4096, encoder_module="mlp_ln_1")
    model.dictionary = oc.RelaxedArchetypalDictionary(args.d, args.concepts, points, delta=0.01)
    del points
    model.running_threshold = None  # as the release: θ comes from the model card
    _save_as_released(model, args.out)
    card = {"model": "BatchTopKSAE", "nb_concepts": args.concepts, "threshold": args.threshold}
    (args.out.parent / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e9:.2f} GB, c={args.concepts}, "
        f"m={args.candidates}, θ={args.threshold}) in {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()

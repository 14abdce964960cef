"""Prepare a run at the paper's shapes with no download (``configs/paper-shapes.yaml``).

Writes what the config points at, if it is not there yet:

- ``encoder.model_id``: a random DINOv2-with-registers with the released base model's config and
  processor (:func:`blindspot_assets.demo.encoder.save_base_dinov2`);
- ``sae.pretrained``: a random RA-SAE of ``sae.n_concepts`` concepts over ``sae.n_candidates``
  candidates in the released checkpoint's pickled format, written by the genuine
  ``overcomplete`` in its own venv (``benchmarks/paper_shapes/make_release.py``), with the model
  card's ``config.json`` beside it giving ``sae.threshold``.

    python -m blindspot_assets.demo.paper_shapes configs/paper-shapes.yaml \\
        --overcomplete-python /tmp/oc-venv/bin/python

The SAE is imported by the ``sae`` asset through ``sae.pretrained`` (the paper run's path).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

from blindspot_assets.config import RunConfig, load_config
from blindspot_assets.demo.encoder import save_base_dinov2

REPO = Path(__file__).resolve().parents[2]
RELEASE_WRITER = REPO / "benchmarks" / "paper_shapes" / "make_release.py"
MAKE_ENV = REPO / "benchmarks" / "overcomplete_env" / "make_env.sh"


def layernorm_threshold(k: int, n_concepts: int) -> float:
    """θ firing ~``k`` of ``n_concepts`` standardised pre-activations per token: Φ⁻¹(1 − k/c)."""
    return NormalDist().inv_cdf(1.0 - k / n_concepts)


def prepare(cfg: RunConfig, overcomplete_python: str | None, log: bool = True) -> dict[str, float]:
    """Write the encoder and the released-format SAE the config points at; seconds per part."""
    done: dict[str, float] = {}
    enc = Path(cfg.encoder.model_id)
    if not (enc / "config.json").exists():
        t0 = time.perf_counter()
        save_base_dinov2(enc, seed=cfg.seed)
        done["encoder_s"] = round(time.perf_counter() - t0, 1)
        if log:
            print(f"wrote the random DINOv2-with-registers-base at {enc}")
    if not cfg.sae.pretrained:
        raise SystemExit(f"{cfg.name}: sae.pretrained is not set; nothing to write")
    src = Path(cfg.sae.pretrained)
    if not src.exists():
        if not overcomplete_python:
            raise SystemExit(
                f"{src} is missing and is written by the genuine overcomplete: build its venv "
                f"(bash {MAKE_ENV} /tmp/oc-venv) and pass --overcomplete-python "
                "/tmp/oc-venv/bin/python"
            )
        sae, theta = cfg.sae.model, cfg.sae.threshold
        if theta is None:
            theta = layernorm_threshold(sae.k, sae.n_concepts)
        src.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cmd = [
            overcomplete_python, str(RELEASE_WRITER), str(src),
            "--concepts", str(sae.n_concepts), "--candidates", str(sae.n_candidates),
            "--k", str(sae.k), "--threshold", repr(float(theta)), "--seed", str(cfg.seed),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        done["sae_release_s"] = round(time.perf_counter() - t0, 1)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Prepare a paper-shapes run's encoder and SAE.")
    ap.add_argument("config", help="run config (configs/paper-shapes.yaml)")
    ap.add_argument(
        "--overcomplete-python",
        default=None,
        help="python of a venv with overcomplete (benchmarks/overcomplete_env/make_env.sh)",
    )
    args = ap.parse_args(argv)
    done = prepare(load_config(args.config), args.overcomplete_python)
    print(f"ready: {done or 'everything was already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Side virtual environment with `overcomplete` for the RA-SAE benchmark (benchmarks/bench_sae.py).
# overcomplete pulls torchvision, scikit-learn, opencv, matplotlib: they must never enter the
# project's .venv (torchvision from PyPI does not import beside the CPU torch 2.13.0 build,
# "operator torchvision::nms does not exist", and once installed it breaks the transformers and
# diffusers model classes too), so it lives in its own venv, outside the repository. torch stays
# the same CPU 2.13.0 build as ours.
set -euo pipefail
VENV="${1:-/tmp/oc-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
constraints="$(mktemp)"
echo "torch==2.13.0" > "$constraints"
"$VENV/bin/pip" install -q -c "$constraints" "torch==2.13.0" "overcomplete==0.3.0"
echo "overcomplete venv ready at $VENV"

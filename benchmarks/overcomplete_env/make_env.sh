#!/usr/bin/env bash
# Side virtual environment with `overcomplete` for the RA-SAE benchmark (benchmarks/bench_sae.py).
# overcomplete must never enter the project's .venv (its dependencies pull torchvision, which
# breaks transformers/diffusers there). The side venv installs only overcomplete 0.3.0 and einops
# (all that `overcomplete.sae` imports beyond torch/numpy), without dependencies, and sees the
# project's own torch and numpy through a .pth file: both sides run the very same torch build,
# and nothing is downloaded but two small wheels.
set -euo pipefail
VENV="${1:-/tmp/oc-venv}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PROJECT_PY="${PROJECT_PY:-$HERE/../../.venv/bin/python}"
python3 -m venv "$VENV"
site="$("$PROJECT_PY" -c 'import site; print(site.getsitepackages()[0])')"
side="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
echo "$site" > "$side/zz_project_site.pth"  # after the venv's own packages
"$VENV/bin/pip" install -q --no-deps "overcomplete==0.3.0" einops
echo "overcomplete venv ready at $VENV"

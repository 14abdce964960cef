#!/usr/bin/env bash
# img2dataset (the LAION downloader) lives in its own virtual environment: it brings ~26
# packages (opencv, pandas, scipy, wandb...) that the project does not need. The tests of the
# `downloader: img2dataset` path run it from there through $BLINDSPOT_IMG2DATASET.
# Usage: bash tests/sources/ensure_img2dataset.sh  → prints the executable's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${IMG2DATASET_VENV:-$root/.tools/img2dataset}"
if [ ! -x "$venv/bin/img2dataset" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q "img2dataset==1.47.*" >&2
fi
echo "$venv/bin/img2dataset"

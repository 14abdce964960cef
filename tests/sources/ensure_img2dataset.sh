#!/usr/bin/env bash
# img2dataset (the LAION downloader) lives in its own virtual environment: it brings ~26
# packages (opencv, pandas, scipy, wandb...) that the project does not need. The tests of the
# `downloader: img2dataset` path run it from there through $BLINDSPOT_IMG2DATASET. It installs
# exactly tests/sources/img2dataset.lock (./run lock refreshes it) with uv ($UV, else on PATH,
# else the project's .venv), its .pyc files written at install (see ./run setup).
# Usage: bash tests/sources/ensure_img2dataset.sh  → prints the executable's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${IMG2DATASET_VENV:-$root/.tools/img2dataset}"
lock="$root/tests/sources/img2dataset.lock"
stamp="$( (cat "$lock"; echo bytecode) | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/img2dataset" ] || [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  uv="${UV:-$(command -v uv || echo "$root/.venv/bin/uv")}"
  "$uv" pip sync -q --compile-bytecode --python "$venv/bin/python" "$lock" >&2
  echo "$stamp" > "$venv/.installed"
fi
echo "$venv/bin/img2dataset"

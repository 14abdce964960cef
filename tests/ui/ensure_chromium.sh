#!/usr/bin/env bash
# Install Debian's chromium for the headless-browser tests of the HTML report, if it is missing.
# Usage (CI, before pytest): bash tests/ui/ensure_chromium.sh
set -euo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$name")"
    exit 0
  fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium
command -v chromium

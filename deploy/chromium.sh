#!/usr/bin/env bash
# Install headless Chromium for the report's browser test, once. Idempotent: does nothing
# when a Chromium is already on PATH (or SAFEMON_CHROMIUM points at one).
# Debian/Ubuntu via apt-get (as root or with sudo); elsewhere, install Chromium yourself.
set -euo pipefail

for name in "${SAFEMON_CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    if [ -n "$name" ] && command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no Chromium and no apt-get; install Chromium and/or set SAFEMON_CHROMIUM" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "chromium.sh: need root or sudo to apt-get install chromium" >&2; exit 1; }
    sudo="sudo"
fi
echo "chromium.sh: installing chromium with apt-get" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null

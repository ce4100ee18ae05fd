#!/usr/bin/env bash
# Install everything (venv, test tools, Debian Chromium) and run the whole test suite, browser tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"

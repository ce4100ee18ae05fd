#!/usr/bin/env bash
# Install everything (first run only) and launch the Spectrascope app on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/python -m streamlit run app/main.py --server.address="${SPECTRASCOPE_ADDRESS:-127.0.0.1}" \
  --server.port="${SPECTRASCOPE_PORT:-8501}" --server.headless=true --browser.gatherUsageStats=false "$@"

#!/usr/bin/env bash
# GPU check (never CI): analysis vs weightwatcher, 50-step LoRA / MoE-LoRA / full runs, a data-parallel run; < 8 min.
#   here (with the venv):   bash benchmarks/gpu_check.sh prepare   # gpu-assets/: MiniLM's config + tokenizer, wheels
#   on the GPU machine:     bash benchmarks/gpu_check.sh           # (carry gpu-assets); tables on stdout and in $OUT
# The GPU machine's python3 has torch, transformers, peft, safetensors, pandas; the wheels add what it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "prepare" ]; then
  rm -rf gpu-assets && mkdir -p gpu-assets/minilm gpu-assets/wheels
  src=$(.venv/bin/python -c "from analysis.sources import open_source; print(open_source(None).hf_folder())")
  for f in config.json vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json; do
    cp "$src/$f" gpu-assets/minilm/
  done
  # pure-Python packages the image lacks (weightwatcher and its power-law fit, gguf, the MLflow client), for 3.12
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform any -d gpu-assets/wheels \
    weightwatcher==0.7.7 powerlaw gguf mlflow-skinny==3.17.2 2>&1 | grep -v "is ignored" || true
  du -sh gpu-assets
  exit 0
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if [ -d gpu-assets/wheels ] && ls gpu-assets/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps gpu-assets/wheels/*.whl
fi
out=${OUT:-gpu-check-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv" || true
timeout 470 "$PY" benchmarks/gpu_check.py "$@" 2>"$out/stderr.log" | tee "$out/gpu_check.md"

"""GPU check: analysis vs weightwatcher, 50-step LoRA / MoE-LoRA / full runs with tokens/s, a data-parallel run.

Run through `bash benchmarks/gpu_check.sh` (it prepares the assets and wheels here, then runs this there). Prints
markdown tables; every figure is measured in this one run, on this machine. Never part of CI.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOAL_SPEEDUP = 30.0          # issue 17.5: ≥ 30× weightwatcher's CPU whole-process time on the 110M model
STEPS = 50


def table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    print(flush=True)


def whole_process(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def analysis_check(work: Path) -> dict:
    """Our analysis on the GPU against weightwatcher on the CPU, both whole processes, on the 110M LLaMA."""
    import numpy as np
    import pandas as pd

    from analysis.ww_oracle import match_names
    from analysis_speed import build_llama_110m

    folder = work / "llama110m"
    build_llama_110m(folder)
    env = {"SPECTRASCOPE_DATA": str(work / "data")}
    ours_csv, ww_json = work / "ours.csv", work / "ww.json"
    cmd = [sys.executable, "-m", "analysis", "analyze", str(folder), "--no-cache", "--device", "cuda",
           "--out", str(ours_csv)]
    whole_process(cmd, env)                       # warm-up: CUDA context, kernels, page cache
    t_gpu = whole_process(cmd, env)
    t_ww = whole_process([sys.executable, "-m", "analysis.ww_oracle", str(folder), "--out", str(ww_json)],
                         {**env, "CUDA_VISIBLE_DEVICES": ""})
    ours = pd.read_csv(ours_csv).set_index("name")
    ww = pd.DataFrame(json.loads(ww_json.read_text())["rows"])
    mapping = match_names(list(ours.index), list(ww["name"]))
    ww = ww[ww["name"].isin(mapping)]
    dalpha = np.abs(ours.loc[ww["name"].map(mapping), "alpha"].to_numpy() - ww["alpha"].to_numpy())
    return {"model": "LLaMA-shaped 110M", "matrices": len(ours), "ours on GPU (process) s": t_gpu,
            "weightwatcher on CPU (process) s": t_ww, "speed-up": t_ww / t_gpu,
            f"goal ≥ {GOAL_SPEEDUP:g}×": "met" if t_ww / t_gpu >= GOAL_SPEEDUP else "NOT met",
            "max |Δα|": float(np.nanmax(dalpha))}


def training_check(work: Path, model: Path, method: str, gpus: int = 1) -> dict:
    """A STEPS-step run of `method` through the job queue (the worker process, as users run it)."""
    from training import registry
    from training.jobs import JobStore

    store = JobStore(work / f"data-{method}-{gpus}")
    config = registry.config_for(method, {"model": str(model), "task": "rotten_tomatoes", "max_steps": STEPS,
                                          "batch_size": 32, "max_length": 128, "max_train_rows": 2000,
                                          "max_eval_rows": 200, "max_test_rows": 200, "eval_every": 0,
                                          "gpus": gpus, "device": "cuda"})
    t0 = time.perf_counter()
    job = store.wait(store.submit(config, name=f"{method}-{gpus}gpu").id, poll=0.5)
    wall = time.perf_counter() - t0
    steps = [p for p in job.progress() if "tokens_per_s" in p]
    tps = sorted(p["tokens_per_s"] for p in steps[5:] or steps)
    result = job.result() or {}
    return {"method": method, "GPUs": gpus, "status": job.status, "steps": result.get("steps"),
            "tokens/s (median step after 5)": tps[len(tps) // 2] if tps else float("nan"),
            "run s (worker)": float(result.get("seconds") or float("nan")), "wall s (queue to done)": wall,
            "test acc": (result.get("test") or {}).get("accuracy", float("nan")),
            "error": (job.error or "")[:120]}


def minilm_shaped(assets: Path, work: Path) -> Path:
    """A randomly initialised model of all-MiniLM-L6-v2's shape with its real tokenizer (from the assets)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    folder = work / "minilm-shaped"
    AutoModel.from_config(AutoConfig.from_pretrained(assets)).save_pretrained(folder)
    for f in assets.iterdir():
        if f.name != "config.json":
            shutil.copy(f, folder / f.name)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--assets", type=Path, default=ROOT / "gpu-assets" / "minilm",
                   help="config.json and tokenizer files of all-MiniLM-L6-v2 (gpu_check.sh prepare writes them)")
    p.add_argument("--skip-analysis", action="store_true")
    p.add_argument("--methods", default="lora,moe_lora,full")
    args = p.parse_args()
    import torch

    n = torch.cuda.device_count()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s): "
          f"{', '.join(torch.cuda.get_device_name(i) for i in range(n))}\n", flush=True)
    if not n:
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_analysis:
            table([analysis_check(work)])
        model = minilm_shaped(args.assets, work)
        rows = [training_check(work, model, m) for m in args.methods.split(",")]
        table(rows)
        table([training_check(work, model, "lora", gpus=n)] if n > 1 else
              [{"data-parallel": f"skipped: this machine has {n} GPU (a run over every GPU needs ≥ 2)"}])
    return 0


if __name__ == "__main__":
    sys.exit(main())

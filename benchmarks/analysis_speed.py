"""Benchmark the spectral engine against weightwatcher 0.7.7: wall time, |Δα|, eigenvalue share, cache hit, peak RSS.

Usage: .venv/bin/python benchmarks/analysis_speed.py [--skip-big] [--big-gb 8]
Prints a markdown table (copied into README). Everything is measured back to back on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, child peak RSS (MiB, this child only) and stdout of a whole process."""
    wrapper = ("import resource,subprocess,sys,json;"
               "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "sys.stderr.write(p.stderr[-2000:]);"
               "print(json.dumps({'rc':p.returncode,'out':p.stdout,"
               "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return wall, res["rss"] // 1024, res["out"]


def pooled(fn, mats) -> float:
    """Seconds to run fn over mats with the engine's CPU arrangement: a thread per core, 1 BLAS thread each."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4)) as pool:
            list(pool.map(fn, mats))
        return time.perf_counter() - t0


def median3(fn) -> float:
    """Median of three timings (in-process figures vary by ±20 % run to run on a 2-core machine)."""
    return sorted(fn() for _ in range(3))[1]


def build_llama_110m(path: Path) -> None:
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                   num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(path, max_shard_size="100MB")


def compare(label: str, model_arg: str, folder: Path, data: Path) -> dict:
    """Our CLI vs weightwatcher (both whole processes), α agreement, bare eigenvalue time, cache hit."""
    import numpy as np
    import pandas as pd

    from analysis import esd
    from analysis.engine import analyze
    from analysis.sources import open_source
    from analysis.ww_oracle import match_names

    env = {"SPECTRASCOPE_DATA": str(data)}
    ours_csv, ww_json = data / f"{label}.csv", data / f"{label}-ww.json"
    t_ours, rss_ours, _ = run([sys.executable, "-m", "analysis", "analyze", model_arg, "--no-cache", "--device",
                               "cpu", "--out", str(ours_csv)], env)
    t_ww, rss_ww, _ = run([sys.executable, "-m", "analysis.ww_oracle", str(folder), "--out", str(ww_json)], env)
    t_hit, _, _ = run([sys.executable, "-m", "analysis", "analyze", model_arg, "--out", str(ours_csv)], env)
    ours = pd.read_csv(ours_csv).set_index("name")
    ww = pd.DataFrame(json.loads(ww_json.read_text())["rows"])
    mapping = match_names(list(ours.index), list(ww["name"]))
    ww = ww[ww["name"].isin(mapping)]
    dalpha = float(np.nanmax(np.abs(ours.loc[ww["name"].map(mapping), "alpha"].to_numpy() - ww["alpha"].to_numpy())))

    os.environ["SPECTRASCOPE_DATA"] = str(data)
    src = open_source(model_arg)
    mats = [w for _, w in src.iter_arrays()]
    t_eig = median3(lambda: pooled(esd.eigenvalues, mats))   # the engine's thread arrangement on CPU
    t_svd = pooled(esd.eigenvalues_svd, mats)
    res = analyze(source=src, use_cache=False, device="cpu")

    def engine_run() -> float:
        t0 = time.perf_counter()
        analyze(source=src, use_cache=False, device="cpu")
        return time.perf_counter() - t0
    t_engine = median3(engine_run)
    t0 = time.perf_counter()
    analyze(model_arg, device="cpu")
    t_hit_inproc = time.perf_counter() - t0
    return {"model": label, "matrices": len(res.matrices), "common with ww": len(ww),
            "ours (process) s": t_ours, "weightwatcher (process) s": t_ww, "speed-up": t_ww / t_ours,
            "max |Δα|": dalpha, "engine in-process s (median of 3)": t_engine, "bare eigvalsh s (median of 3)": t_eig,
            "engine / bare": t_engine / t_eig, "svdvals s": t_svd, "cache hit (process) s": t_hit,
            "cache hit (in-process) s": t_hit_inproc, "peak RSS ours MiB": rss_ours, "peak RSS ww MiB": rss_ww}


def big_checkpoint_rss(gb: float, workdir: Path) -> dict:
    """Peak RSS of `analyze` on a generated sharded float32 checkpoint of ≥ gb GB (2048 × 32768 matrices)."""
    import torch
    from safetensors.torch import save_file
    folder = workdir / "big"
    folder.mkdir()
    rows, cols = 2048, 32768
    per = rows * cols * 4
    n = int(gb * 1e9 // per) + 1
    index, g = {"metadata": {"total_size": n * per}, "weight_map": {}}, torch.Generator().manual_seed(0)
    for i in range(n):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        shard = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: torch.randn(rows, cols, generator=g) * 0.02}, str(folder / shard))
        index["weight_map"][name] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    size = sum(f.stat().st_size for f in folder.iterdir())
    wall, rss, _ = run([sys.executable, "-m", "analysis", "analyze", str(folder), "--no-cache", "--device", "cpu",
                        "--out", str(workdir / "big.csv")], {"SPECTRASCOPE_DATA": str(workdir / "data")})
    largest = per / 2**20
    return {"checkpoint GB": size / 1e9, "matrices": n, "largest tensor MiB": largest, "wall s": wall,
            "peak RSS MiB": rss, "budget MiB (4×largest+1.5 GB)": 4 * largest + 1536}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-big", action="store_true", help="skip the ≥ 8 GB peak-RSS run")
    ap.add_argument("--big-only", action="store_true", help="only the ≥ 8 GB peak-RSS run")
    ap.add_argument("--big-gb", type=float, default=8.0)
    ap.add_argument("--omp-threads", type=int, help="set OMP_NUM_THREADS for every process (fair under load)")
    args = ap.parse_args()
    if args.omp_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.omp_threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.big_only:
            from analysis.sources import open_source
            default_folder = open_source(None).hf_folder()
            rows.append(compare("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", default_folder, tmp))
            build_llama_110m(tmp / "llama110m")
            rows.append(compare("LLaMA-shaped 110M (sharded)", str(tmp / "llama110m"), tmp / "llama110m", tmp))
            keys = list(rows[0])
            print("| " + " | ".join(keys) + " |")
            print("|" + "---|" * len(keys))
            for r in rows:
                print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        if not args.skip_big:
            big = big_checkpoint_rss(args.big_gb, tmp)
            print()
            print("| " + " | ".join(big) + " |")
            print("|" + "---|" * len(big))
            print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in big.values()) + " |")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

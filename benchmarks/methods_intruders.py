"""Intruder dimensions (ε = 0.5, top-10) of every registered method on the default model, same budget, ≥ 3 seeds,
each method at the learning rate that its own small sweep picked on validation accuracy."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from study_sweep import ADAPTER, BUDGET, run  # noqa: E402  (the study's budget; runs shared with the sweep)

TOP_K, EPSILON = 10, 0.5
LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)   # the learning rates a sweep may try


def run_name(method_name: str, lr: float) -> str:
    """One run folder per method and lr; LoRA and full reuse the study sweep's names (and its runs)."""
    return f"{method_name}-lr{lr:g}"


def lr_grid(default: float) -> list[float]:
    """The method's registry default and its two neighbours on LADDER (a best value at an edge of this grid
    means the default should move there and the sweep run again)."""
    i = min(range(len(LADDER)), key=lambda j: abs(LADDER[j] / default - 1))
    return list(LADDER[max(i - 1, 0):i + 2])


def select_lr(method, out_dir: Path) -> tuple[float, list[dict]]:
    """Seed-0 runs over lr_grid(default_lr); the lr with the best VALIDATION accuracy (ties: the default, then
    the lower lr). The test split plays no part in the choice."""
    rows = []
    for lr in lr_grid(method.default_lr):
        overrides = registry_overrides(method.name, lr)
        rows.append(run(run_name(method.name, lr), method.name, overrides, 0, out_dir))
    best = max(rows, key=lambda r: (r["val_acc"], r["lr_used"] == method.default_lr, -r["lr_used"]))
    return best["lr_used"], rows


def registry_overrides(method_name: str, lr: float) -> dict:
    """The benchmark's adapter settings at `lr`, less what the method does not take (full: no rank)."""
    from training import registry

    overrides = registry.config_for(method_name, {**ADAPTER, "lr": lr})
    overrides.pop("method")
    return overrides


def tuned_pairs(method, run_dir: Path):
    """(info, W0, W) triples of the run's 36 block matrices against the base, however the method stores them.

    A MoE-style run (weights "moe") gives one triple per expert: W0 + s·B_e·A_e, each a rank-r LoRA of its own."""
    import torch

    from analysis.intruders import match_matrices
    from analysis.sources import open_source

    base = open_source(None)
    if method.weights == "moe":
        from training.moe_lora.spectra import expert_pairs
        from training.trainer import load_artifacts

        model = load_artifacts(run_dir, device="cpu")[0]
        for info, b, W0, W in expert_pairs(model, base, method.label, method.unit):
            yield info, W0, W
        return
    art = run_dir / "artifacts" / method.artifact_dir
    if method.weights == "adapter":
        tuned = open_source(None, adapter=art)
    elif method.weights == "model":
        tuned = open_source(art)
    else:
        from training.merged import merged_source

        tuned = merged_source(run_dir)
    for b, t in match_matrices(base, tuned):
        yield b, torch.from_numpy(base.load_array(b.name)), torch.from_numpy(tuned.load_array(t.name))


def intruders(method, run_dir: Path) -> dict:
    """Block-matrix intruders at ε = 0.5 (for MoE-style runs: summed over experts, and per expert on average)."""
    from analysis.intruders import compare_matrices

    cached = run_dir / "intruders_methods.json"
    if cached.is_file() and cached.stat().st_mtime >= (run_dir / "artifacts").stat().st_mtime:
        return json.loads(cached.read_text())
    report = compare_matrices(tuned_pairs(method, run_dir), top_k=TOP_K, epsilon=EPSILON)
    blocks = report.block_comparisons
    experts = max(1, len(blocks) // 36)
    out = {"total": report.total, "matrices": len(blocks), "per_lora": report.total / experts,
           "matrices_with": sum(bool(c.intruders(EPSILON)) for c in blocks)}
    cached.write_text(json.dumps(out))
    return out


def main() -> int:
    from analysis.config import data_dir
    from training import registry
    from training.metrics import mean_ci

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--methods", default=",".join(registry.names()), help="comma-separated (default: all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out-dir", type=Path, default=None, help="run folders (default: data dir/sweep)")
    args = p.parse_args()
    out_dir = (args.out_dir or data_dir() / "sweep").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, rows, sweeps = time.time(), [], []
    for name in args.methods.split(","):
        method = registry.get(name.strip())
        lr, tried = select_lr(method, out_dir)
        sweeps.append((method, lr, tried))
        runs = []
        for seed in range(args.seeds):
            row = run(run_name(method.name, lr), method.name, registry_overrides(method.name, lr), seed, out_dir)
            runs.append({**row, **intruders(method, out_dir / f"{run_name(method.name, lr)}-s{seed}")})
        acc, total, per = (mean_ci([r[k] for r in runs]) for k in ("test_acc", "total", "per_lora"))
        rows.append({"method": method.label, "lr": lr, "n": len(runs), "acc": acc, "total": total,
                     "per_lora": per, "totals": [r["total"] for r in runs], "params": runs[0]["trainable"],
                     "experts": runs[0]["total"] != runs[0]["per_lora"] or method.weights == "moe",
                     "unit": method.unit, "name": method.name, "accs": [r["test_acc"] for r in runs]})
        print(f"[{method.label}] intruders {[r['total'] for r in runs]}, acc {[round(r['test_acc'], 3) for r in runs]}",
              file=sys.stderr, flush=True)
    print(f"\nbudget: {json.dumps(BUDGET)}, adapters {json.dumps(ADAPTER)}; {args.seeds} seeds; "
          f"{time.time() - t0:.0f} s\n")
    print("Learning rate per method: validation accuracy of seed 0 at the registry default and its neighbours\n")
    print("| method | registry default | validation accuracy by lr (seed 0) | picked |")
    print("|---|---|---|---|")
    for method, lr, tried in sweeps:
        grid = ", ".join(f"{r['lr_used']:g}: {r['val_acc']:.3f}" for r in tried)
        edge = " (at the grid's edge: move the default there and rerun)" if lr in (tried[0]["lr_used"],
                                                                                      tried[-1]["lr_used"]) else ""
        flag = "" if lr == method.default_lr else " (differs from the default)"
        print(f"| {method.label} | {method.default_lr:g} | {grid} | {lr:g}{flag}{edge} |")
    print()
    lora = next((r["accs"] for r in rows if r["name"] == "lora"), None)
    print("| method | lr | seeds | trainable params | test acc (mean ± 95 % CI) | − LoRA, paired by seed (mean ± 95 % "
          "CI) | intruders ε = 0.5, 36 block matrices (mean ± 95 % CI) | per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        paired = "—"
        if lora is not None and r["name"] != "lora" and len(r["accs"]) == len(lora) > 1:
            d = mean_ci([a - b for a, b in zip(r["accs"], lora)])     # same seed: same batch order and head init
            paired = f"{d.mean:+.3f} ± {d.half_width:.3f}"
        count = (f"{r['per_lora'].mean:.1f} ± {r['per_lora'].half_width:.1f} per {r['unit']} "
                 f"({r['total'].mean:.1f} over all {r['unit']}s)" if r["experts"]
                 else f"{r['total'].mean:.1f} ± {r['total'].half_width:.1f}")
        print(f"| {r['method']} | {r['lr']:g} | {r['n']} | {r['params']:,} | {r['acc'].mean:.3f} ± "
              f"{r['acc'].half_width:.3f} | {paired} | {count} | {' '.join(str(t) for t in r['totals'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Intruder dimensions (Shuttleworth et al.) of LoRA r = 1, 8, 64 and full fine-tuning of the default model, ≥ 3 seeds."""
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

TASK = "rotten_tomatoes"
TOP_K, EPSILON = 10, 0.5
EPSILONS = [round(0.1 * i, 1) for i in range(1, 10)]
LAYERS = 6
# Each method's own small learning-rate sweep (seed 0, selected on validation accuracy). LoRA keeps α = 2r, so a
# higher rank moves the weights more per step: its grid sits lower. r = 8 and full share the study sweep's runs.
GRIDS = {1: (1e-3, 3e-3, 1e-2), 8: (3e-4, 1e-3, 3e-3), 64: (1e-4, 3e-4, 1e-3), "full": (1e-5, 3e-5, 1e-4)}


def run_name(rank, lr: float) -> str:
    """The sweep's run names (r = 8 is the sweep's own LoRA), so finished runs are reused."""
    if rank == "full":
        return f"full-lr{lr:g}"
    return f"lora-lr{lr:g}" if rank == 8 else f"lora-r{rank}-lr{lr:g}"


def train_run(rank, lr: float, seed: int, out_dir: Path) -> tuple[Path, dict]:
    """One run at the study's budget (reused when finished); returns its folder and its sweep row."""
    method = "full" if rank == "full" else "lora"
    overrides = {"lr": lr} if rank == "full" else {**ADAPTER, "rank": rank, "lr": lr}
    row = run(run_name(rank, lr), method, overrides, seed, out_dir)
    return out_dir / f"{run_name(rank, lr)}-s{seed}", row


def intruder_counts(run_dir: Path, method: str) -> dict:
    """Intruders of the run vs the base over the 36 block matrices: total, per layer, ε sweep, median ‖ΔW‖/‖W0‖."""
    import numpy as np

    from analysis.intruders import compare
    from analysis.sources import open_source

    cached = run_dir / "intruders.json"
    if cached.is_file() and cached.stat().st_mtime >= (run_dir / "artifacts").stat().st_mtime:
        counts = json.loads(cached.read_text())
        return {**counts, "sweep": {float(e): n for e, n in counts["sweep"].items()}}
    art = run_dir / "artifacts"
    tuned = open_source(None, adapter=art / "adapter") if method == "lora" else open_source(art / "model")
    report = compare(open_source(None), tuned, top_k=TOP_K, epsilon=EPSILON)
    blocks = report.block_comparisons
    if len(blocks) != 6 * LAYERS:
        raise SystemExit(f"expected 36 block matrices, compared {len(blocks)} ({run_dir.name})")
    rel = [float(np.sqrt((c.delta_sigmas.astype(float) ** 2).sum() / (c.base_sigmas.astype(float) ** 2).sum()))
           for c in blocks]
    counts = {
        "total": report.total,                      # block matrices only, as the CLI and the app count
        "counted": report.counted,
        "per_layer": [sum(len(c.intruders(EPSILON)) for c in blocks if c.info.layer == layer)
                      for layer in range(LAYERS)],
        "sweep": {e: sum(len(c.intruders(e)) for c in blocks) for e in EPSILONS},
        "matrices_with": sum(bool(c.intruders(EPSILON)) for c in blocks),
        "min_similarity": float(min(c.similarities.min() for c in blocks)),
        "rel_delta": float(np.median(rel)),
        "modules": sorted({c.info.module for c in blocks if c.intruders(EPSILON)}),
    }
    cached.write_text(json.dumps(counts))
    return counts


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, 95 % Student-t half-width; NaN for one value) — training.metrics.mean_ci."""
    from training.metrics import mean_ci as ci

    out = ci(values)
    return out.mean, out.half_width


def label(rank) -> str:
    return "full fine-tune" if rank == "full" else f"LoRA r = {rank}"


def sweep_table(sweep: list[dict]) -> str:
    lines = ["| method | lr | val acc (selection) | test acc | intruders ε=0.5 | chosen |", "|---|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {label(r['rank'])} | {r['lr']:g} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | {r['total']} "
                     f"| {'**yes**' if r['chosen'] else ''} |")
    return "\n".join(lines)


def seeds_table(summary: list[dict]) -> str:
    lines = ["| method | lr | seeds | test acc (mean ± 95 % CI) | intruders ε=0.5 (mean ± 95 % CI) | per seed "
             "| matrices with (mean) | median ‖ΔW‖/‖W0‖ | ε sweep 0.1…0.9 (mean) |", "|" + "---|" * 9]
    for r in summary:
        lines.append(f"| {label(r['rank'])} | {r['lr']:g} | {r['n']} | {r['acc']:.3f} ± {r['acc_ci']:.3f} "
                     f"| **{r['total']:.1f} ± {r['total_ci']:.1f}** | {' '.join(str(t) for t in r['totals'])} "
                     f"| {r['matrices_with']:.1f}/36 | {r['rel_delta']:.4f} "
                     f"| {' '.join(format(r['sweep'][e], '.1f') for e in EPSILONS)} |")
    return "\n".join(lines)


def verdicts(summary: list[dict]) -> list[str]:
    """One plain sentence per LoRA rank against full fine-tuning: do the 95 % CIs of the intruder counts separate?"""
    full = next(r for r in summary if r["rank"] == "full")
    out = []
    for r in summary:
        if r["rank"] == "full":
            continue
        lo, hi = r["total"] - r["total_ci"], r["total"] + r["total_ci"]
        flo, fhi = full["total"] - full["total_ci"], full["total"] + full["total_ci"]
        if lo > fhi:
            what = "more intruders than full fine-tuning (the 95 % intervals do not overlap)"
        elif hi < flo:
            what = "fewer intruders than full fine-tuning (the 95 % intervals do not overlap)"
        else:
            what = "no detectable difference from full fine-tuning at this budget (the 95 % intervals overlap)"
        out.append(f"{label(r['rank'])} ({r['total']:.1f} ± {r['total_ci']:.1f}, test acc {r['acc']:.3f}): {what}.")
    return out


def write_figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(summary)
    for i, r in enumerate(summary):
        name = f"{label(r['rank'])}, lr {r['lr']:g}"
        means = [r["sweep"][e] for e in EPSILONS]
        half = [0.0 if np.isnan(r["sweep_ci"][e]) else r["sweep_ci"][e] for e in EPSILONS]
        below = [min(h, m) for h, m in zip(half, means)]            # a count is never negative: clip at 0
        left.errorbar(EPSILONS, means, yerr=[below, half], marker="o", capsize=2, label=name)
        right.bar(np.arange(LAYERS) + (i - (len(summary) - 1) / 2) * width, r["per_layer"], width, label=name)
    left.axvline(EPSILON, color="grey", linestyle=":", linewidth=1)
    left.set_ylim(bottom=0)
    left.set(xlabel="ε", ylabel="intruders (36 matrices, top-10), mean ± 95 % CI",
             title=f"Intruder count vs ε ({summary[0]['n']} seeds)")
    right.set(xlabel="layer", ylabel="intruders at ε = 0.5 (mean over seeds)", title="Per layer (ε = 0.5)",
              xticks=range(LAYERS))
    for ax in (left, right):
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.suptitle("all-MiniLM-L6-v2 on rotten_tomatoes, the study's budget: intruder dimensions vs the base")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(rank, lr: float, runs: list[dict]) -> dict:
    acc, acc_ci = mean_ci([r["test_acc"] for r in runs])
    total, total_ci = mean_ci([r["total"] for r in runs])
    mean = lambda key: sum(r[key] for r in runs) / len(runs)                       # noqa: E731
    return {"rank": rank, "lr": lr, "n": len(runs), "acc": acc, "acc_ci": acc_ci, "total": total,
            "total_ci": total_ci, "totals": [r["total"] for r in runs], "matrices_with": mean("matrices_with"),
            "rel_delta": mean("rel_delta"), "sweep": {e: sum(r["sweep"][e] for r in runs) / len(runs) for e in EPSILONS},
            "sweep_ci": {e: mean_ci([r["sweep"][e] for r in runs])[1] for e in EPSILONS},
            "per_layer": [sum(r["per_layer"][i] for r in runs) / len(runs) for i in range(LAYERS)]}


def main() -> int:
    from analysis.config import data_dir

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3, help="seeds at each method's chosen learning rate (default 3)")
    p.add_argument("--out-dir", type=Path, default=None, help="run folders (default: data dir/sweep, shared with "
                                                              "benchmarks/study_sweep.py)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where intruders_default.md/.png go")
    args = p.parse_args()
    out_dir = (args.out_dir or data_dir() / "sweep").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sweep, summary = [], []
    for rank, grid in GRIDS.items():
        tried = []
        for lr in grid:
            run_dir, row = train_run(rank, lr, 0, out_dir)
            tried.append({"rank": rank, "lr": lr, **row, **intruder_counts(run_dir, "full" if rank == "full" else "lora")})
        best = max(tried, key=lambda r: r["val_acc"])          # selection on validation, never on test
        for r in tried:
            r["chosen"] = r is best
        sweep += tried
        runs = [best]
        for seed in range(1, args.seeds):
            run_dir, row = train_run(rank, best["lr"], seed, out_dir)
            runs.append({**row, **intruder_counts(run_dir, "full" if rank == "full" else "lora")})
        summary.append(summarise(rank, best["lr"], runs))
        print(f"[{label(rank)}] lr {best['lr']:g}: intruders {[r['total'] for r in runs]}, "
              f"acc {[round(r['test_acc'], 3) for r in runs]}", file=sys.stderr, flush=True)
    print(sweep_table(sweep))
    print()
    print(seeds_table(summary))
    print()
    print("\n".join(verdicts(summary)))
    args.docs.mkdir(parents=True, exist_ok=True)
    write_figure(summary, args.docs / "intruders_default.png")
    (out_dir / "intruders_summary.json").write_text(json.dumps({"sweep": sweep, "summary": summary}, indent=1,
                                                               default=str))
    print(f"\n{time.time() - t0:.0f} s; figure {args.docs / 'intruders_default.png'}; budget {json.dumps(BUDGET)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

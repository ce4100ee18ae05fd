"""Intruder dimensions (Shuttleworth et al.) of LoRA r=1, LoRA r=8 and full fine-tuning of the default model."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK = "rotten_tomatoes"
RANKS = (1, 8)
TOP_K, EPSILON = 10, 0.5
EPSILONS = [round(0.1 * i, 1) for i in range(1, 10)]
# Every linear layer of the 6 blocks (q, k, v, attention output, fc_in, fc_out): the same 36 matrices full
# fine-tuning changes. "output.dense" matches both attention.output.dense and output.dense, not pooler.dense.
TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]
LAYERS = 6


def run_config(method: str, rank: int | None, steps: int, lr: float, seed: int) -> dict:
    cfg = {"method": method, "task": TASK, "seed": seed, "max_steps": steps, "lr": lr, "batch_size": 16,
           "max_length": 64, "eval_every": 0, "keep_best": False, "max_train_rows": None, "max_eval_rows": 64, "max_test_rows": 500,
           "device": "cpu"}
    if method == "lora":
        cfg.update(rank=rank, alpha=2.0 * rank, target_modules=TARGETS)
    return cfg


def train_run(method: str, rank: int | None, steps: int, lr: float, seed: int, out_dir: Path) -> tuple[Path, dict]:
    """Train one run (or reuse a finished one with the same settings); returns its folder and result."""
    from training.trainer import train

    name = f"{method}{'-r' + str(rank) if rank else ''}-steps{steps}-lr{lr:g}-seed{seed}"
    run_dir = out_dir / name
    done = run_dir / "result.json"
    if done.is_file():
        print(f"[{name}] reusing finished run", file=sys.stderr, flush=True)
        return run_dir, json.loads(done.read_text())

    def progress(line: dict) -> None:
        if line["step"] % 25 == 0 or line["step"] == line["total_steps"]:
            print(f"[{name}] step {line['step']}/{line['total_steps']} loss {line['loss']:.4f} "
                  f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    t0 = time.time()
    result = train(run_config(method, rank, steps, lr, seed), run_dir, progress)
    if result.get("status") != "done":
        raise SystemExit(f"run {name} did not finish: {result}")
    done.write_text(json.dumps(result, indent=1, default=str))
    return run_dir, result


def intruder_counts(run_dir: Path, method: str) -> dict:
    """Intruders of the run vs the base over the 36 block matrices: total, per layer, ε sweep, median ‖ΔW‖/‖W0‖."""
    import numpy as np

    from analysis.intruders import compare
    from analysis.sources import open_source

    cached = run_dir / "intruders.json"
    if cached.is_file() and cached.stat().st_mtime >= (run_dir / "result.json").stat().st_mtime:
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


def markdown_table(rows: list[dict]) -> str:
    head = ("| method | rank | steps | lr | test acc | intruders ε=0.5 | matrices with | per layer 0–5 "
            "| min s_j | median ‖ΔW‖/‖W0‖ | ε sweep 0.1…0.9 | train s |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['method']} | {r['rank'] or '—'} | {r['steps']} | {r['lr']:g} | {r['acc']:.3f} "
                     f"| **{r['total']}** | {r['matrices_with']}/36 | {' '.join(map(str, r['per_layer']))} "
                     f"| {r['min_similarity']:.2f} | {r['rel_delta']:.4f} "
                     f"| {' '.join(str(r['sweep'][e]) for e in EPSILONS)} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def majority_rate() -> float:
    """Test accuracy of always predicting the most common label (a run at this rate did not learn)."""
    from training.trainer import TrainConfig, load_task, split_rows

    cfg = TrainConfig(**{k: v for k, v in run_config("full", None, 1, 1e-4, 0).items()})
    labels = [int(r["label"]) for r in split_rows(load_task(cfg), cfg)["test"]]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def paragraph(rows: list[dict], chance: float) -> str:
    """What the numbers say, per (steps, LoRA lr) setting, compared with the paper's claim."""
    out = []
    learned = lambda r: r["acc"] > chance + 0.05                               # noqa: E731
    for steps in sorted({r["steps"] for r in rows}):
        full = next((r for r in rows if r["method"] == "full" and r["steps"] == steps), None)
        for lr in sorted({r["lr"] for r in rows if r["method"] == "lora" and r["steps"] == steps}):
            lora = {r["rank"]: r for r in rows if r["method"] == "lora" and r["steps"] == steps and r["lr"] == lr}
            parts = [f"LoRA r={k} {v['total']} (acc {v['acc']:.3f})" for k, v in sorted(lora.items())]
            if full:
                parts.append(f"full (lr {full['lr']:g}) {full['total']} (acc {full['acc']:.3f})")
            good = [k for k, v in sorted(lora.items()) if learned(v)]
            failed = [k for k in sorted(lora) if k not in good]
            ok = (full is not None and learned(full) and full["total"] <= 3 and good
                  and all(lora[k]["total"] > full["total"] for k in good))
            ranks = " and ".join(f"r={k}" for k in good)
            verdict = (f"among the runs that learned, the paper's pattern holds (LoRA {ranks} has intruders, "
                       "full fine-tuning about none)" if ok else "the paper's pattern is NOT reproduced")
            text = (f"With {steps} steps and LoRA lr {lr:g}, intruders at ε=0.5 (top-10, 36 block matrices): "
                    f"{', '.join(parts)}; {verdict}.")
            if failed:
                text += (f" LoRA {' and '.join(f'r={k}' for k in failed)} did not learn (test accuracy near the "
                         f"majority-class rate {chance:.3f}), so its count is no evidence either way.")
            out.append(text)
    out.append("One seed and a CPU-sized budget (batch 16, well under one epoch); the paper trains far longer.")
    return " ".join(out)


def write_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        label = (f"LoRA r={r['rank']}, lr {r['lr']:g}" if r["method"] == "lora" else f"full, lr {r['lr']:g}")
        label += f", {r['steps']} steps"
        left.plot(EPSILONS, [r["sweep"][e] for e in EPSILONS], marker="o", label=label)
        right.bar(np.arange(LAYERS) + (i - (len(rows) - 1) / 2) * width, r["per_layer"], width, label=label)
    left.axvline(EPSILON, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="ε", ylabel="intruder dimensions (36 matrices, top-10)", title="Intruder count vs ε")
    right.set(xlabel="layer", ylabel="intruder dimensions at ε = 0.5", title="Per-layer intruders (ε = 0.5)",
              xticks=range(LAYERS))
    right.set_ylim(0, max(1, *(max(r["per_layer"]) for r in rows)) * 1.15)
    for ax in (left, right):
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("all-MiniLM-L6-v2 on rotten_tomatoes: intruder dimensions vs the base")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_doc(rows: list[dict], args, path: Path) -> None:
    lrs = ", ".join(f"{x:g}" for x in args.lr_lora)
    train_min = sum(r["seconds"] for r in rows) / 60
    text = f"""# Intruder dimensions on the default model (all-MiniLM-L6-v2, rotten_tomatoes)

Reproduction of Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of Equivalence", on CPU.
Generated by `benchmarks/intruders_paper.py` (seed {args.seed}) on a heavily shared 2-core CPU: training (with
the test pass) took {train_min:.0f} min in all (column "train s"; the speed swung 10× with the machine's load).

Setup: `training.trainer.train`, seed {args.seed}, batch 16 × 64 tokens, the whole training split (10,202 rows), linear schedule
with 10 % warm-up, AdamW, no weight decay, no best-checkpoint restore (the weights after the last step are
compared), test accuracy on a seeded 500-row subset of the test split. LoRA: α = 2r, dropout 0.05, on every linear layer of the 6 blocks
(query, key, value, attention output, intermediate, output; the classifier head trains too); LoRA lr {lrs};
full fine-tuning lr {args.lr_full:g}. Intruders: `analysis.intruders.compare` (base vs merged LoRA / saved full
model), top-k = 10, summed over the 36 block matrices (the pooler and embeddings are not counted). "min s_j" is
the lowest similarity of any top-10 fine-tuned singular vector to the base; ‖ΔW‖/‖W0‖ is the median relative
Frobenius change.

{markdown_table(rows)}

![intruder count vs ε and per layer](intruders_default.png)

{paragraph(rows, majority_rate())}
"""
    path.write_text(text)


def main() -> int:
    from analysis.config import data_dir

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, nargs="+", default=[300], help="step budget(s), the same for every method")
    p.add_argument("--lr-lora", type=float, nargs="+", default=[5e-4], help="LoRA learning rate(s)")
    p.add_argument("--lr-full", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None, help="run folders (default: data dir/intruders-paper)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where intruders_default.md/.png go")
    args = p.parse_args()
    out_dir = (args.out_dir or data_dir() / "intruders-paper").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    plan = [("lora", r, s, lr) for s in args.steps for lr in args.lr_lora for r in RANKS]
    plan += [("full", None, s, args.lr_full) for s in args.steps]
    rows = []
    for method, rank, steps, lr in plan:
        run_dir, result = train_run(method, rank, steps, lr, args.seed, out_dir)
        counts = intruder_counts(run_dir, method)
        rows.append({"method": method, "rank": rank, "steps": steps, "lr": lr, "acc": result["test"]["accuracy"],
                     "seconds": result["seconds"], **counts})
        print(f"[{run_dir.name}] acc {rows[-1]['acc']:.3f} intruders {counts['total']} "
              f"in {counts['modules']}", file=sys.stderr, flush=True)
    elapsed = time.time() - t0
    print(markdown_table(rows))
    print()
    print(paragraph(rows, majority_rate()))
    args.docs.mkdir(parents=True, exist_ok=True)
    write_figure(rows, args.docs / "intruders_default.png")
    write_doc(rows, args, args.docs / "intruders_default.md")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"\nwrote {args.docs / 'intruders_default.md'}, {args.docs / 'intruders_default.png'}; "
          f"{elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

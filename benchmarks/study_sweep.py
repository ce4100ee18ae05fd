"""Small learning-rate / head-lr / warm-up sweep behind the study defaults; prints a table (docs/sweep_default.md)."""
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

# The budget the sweep holds fixed while it varies one setting: the study's (training.study_plan.STUDY_DEFAULTS,
# one epoch of the 2,000 rows = 125 steps) but stopped at 120 steps.
BUDGET = {"task": "rotten_tomatoes", "max_steps": 120, "max_train_rows": 2000, "max_eval_rows": 500,
          "max_test_rows": None, "eval_every": 40, "batch_size": 16, "max_length": 64, "device": "cpu"}
ADAPTER = {"target_modules": ["all-linear"], "rank": 8}
# (name, method, overrides): adapter lr for LoRA and MoE-LoRA, full lr, then head lr and warm-up at the adapter lr
GRID = {
    "adapter_lr": [(f"{m}-lr{lr:g}", m, {**ADAPTER, "lr": lr}) for m in ("lora", "moe_lora") for lr in (3e-4, 1e-3, 3e-3)],
    "full_lr": [(f"full-lr{lr:g}", "full", {"lr": lr}) for lr in (3e-5, 1e-4)],
}


def head_grid(lr: float) -> list:
    return [(f"lora-lr{lr:g}-head{h:g}", "lora", {**ADAPTER, "lr": lr, "head_lr": h}) for h in (lr, 1e-2)]


def warmup_grid(lr: float) -> list:
    return [(f"lora-lr{lr:g}-warmup{w:g}", "lora", {**ADAPTER, "lr": lr, "warmup_ratio": w}) for w in (0.0, 0.3)]


def run(name: str, method: str, overrides: dict, seed: int, out: Path) -> dict:
    """One training run in this process (reused when its result is already in `out`)."""
    from training.trainer import train

    record = out / f"{name}-s{seed}.json"
    if record.is_file():
        return json.loads(record.read_text())
    config = {**BUDGET, **overrides, "method": method, "seed": seed}
    t0 = time.time()
    result = train(config, out / f"{name}-s{seed}")
    row = {"name": name, "method": method, "seed": seed, **{k: v for k, v in overrides.items() if k != "target_modules"},
           "val_acc": (result.get("validation") or {}).get("accuracy"), "test_acc": (result.get("test") or {}).get("accuracy"),
           "best_step": result.get("best_step"), "trainable": result.get("trainable_params"), "lr_used": result.get("lr"),
           "head_lr_used": result.get("head_lr"), "seconds": round(time.time() - t0, 1)}
    record.write_text(json.dumps(row))
    print(json.dumps(row), flush=True)
    return row


def best_lr(rows: list[dict], method: str) -> float:
    """The adapter lr with the best validation accuracy for `method` (selection on validation, never test)."""
    return max((r for r in rows if r["method"] == method and "head_lr" not in r and "warmup_ratio" not in r),
               key=lambda r: r["val_acc"])["lr"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "spectrascope-data" / "sweep"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(n, m, o, args.seed, out) for n, m, o in GRID["adapter_lr"] + GRID["full_lr"]]
    lr = best_lr(rows, "lora")
    rows += [run(n, m, o, args.seed, out) for n, m, o in head_grid(lr) + warmup_grid(lr)]
    print(f"\nbudget: {json.dumps(BUDGET)}; seed {args.seed}; selection by validation accuracy "
          f"({BUDGET['max_eval_rows']} rows)\n")
    print("| run | method | lr | head lr | warm-up | val acc | test acc | best step | trainable | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['method']} | {r['lr_used']:g} | {r['head_lr_used'] or '—'} | "
              f"{r.get('warmup_ratio', 0.1):g} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | {r['best_step']} | "
              f"{r['trainable']:,} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

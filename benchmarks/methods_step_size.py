"""How far each method moves the weights in its first steps at one learning rate: median ‖W_t − W‖/‖W‖ over the
adapted matrices after N optimizer steps of the real trainer, methods side by side (docs/methods_intruders.md)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from methods_intruders import registry_overrides, tuned_pairs  # noqa: E402  (same weights reader as the table)
from study_sweep import run  # noqa: E402

# Short runs: N steps under the study's settings, no validation, a token test set (the test score is not read).
SHORT = {"eval_every": 0, "max_eval_rows": 50, "max_test_rows": 50, "keep_best": False}


def relative_moves(method, run_dir: Path) -> list[float]:
    """‖W_t − W‖_F / ‖W‖_F of every matrix the run shares with the base (per expert for MoE-style runs), W the base
    weight; an unadapted matrix counts as 0."""
    return [float((W - W0).norm() / W0.norm()) for _, W0, W in tuned_pairs(method, run_dir)]


def main() -> int:
    from analysis.config import data_dir
    from training import registry

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--methods", default="lora,pissa,corda,minor,adalora", help="comma-separated")
    p.add_argument("--lrs", default="3e-4,1e-3,1e-2", help="comma-separated learning rates")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (of a run whose schedule ends there)")
    p.add_argument("--out-dir", type=Path, default=None, help="run folders (default: data dir/step_size)")
    args = p.parse_args()
    out_dir = (args.out_dir or data_dir() / "step_size").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, table = time.time(), []
    for name in args.methods.split(","):
        method = registry.get(name.strip())
        for lr in (float(x) for x in args.lrs.split(",")):
            tag = f"{method.name}-lr{lr:g}-steps{args.steps}"
            overrides = registry.config_for(method.name, {**registry_overrides(method.name, lr), **SHORT,
                                                          "max_steps": args.steps, "dropout": 0.0})
            overrides.pop("method")
            run(tag, method.name, overrides, 0, out_dir)
            cache = out_dir / f"{tag}-s0" / "moves.json"
            if not cache.is_file():
                cache.write_text(json.dumps(relative_moves(method, out_dir / f"{tag}-s0")))
            moves = json.loads(cache.read_text())
            table.append((method.label, lr, statistics.median(moves), max(moves), len(moves)))
    print(f"\n{args.steps} optimizer steps (warm-up 10 %, linear decay to 0 at step {args.steps}), seed 0, rank 8 on "
          f"every linear layer, batch 16, no dropout; {time.time() - t0:.0f} s\n")
    print("| method | lr | median ‖ΔW‖/‖W‖ | max | matrices |")
    print("|---|---|---|---|---|")
    for label, lr, med, top, n in table:
        print(f"| {label} | {lr:g} | {med:.4f} | {top:.4f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

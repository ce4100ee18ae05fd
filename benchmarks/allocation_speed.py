"""Time a fresh AlphaLoRA allocation + parameter count (and rank export) on an 80-layer model; goal ≤ 100 ms."""
from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import allocation as al          # noqa: E402
from analysis.types import MatrixInfo          # noqa: E402

GOAL_MS = 100.0
N_LAYERS = 80
# LLaMA-2-70B-like block: d = 8192, grouped k/v of 1024, MLP 28672
SHAPES = {"q": (8192, 8192), "k": (1024, 8192), "v": (1024, 8192), "o": (8192, 8192),
          "gate": (28672, 8192), "up": (28672, 8192), "down": (8192, 28672)}
NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def matrices(n_layers: int = N_LAYERS) -> list[MatrixInfo]:
    out = [MatrixInfo("model.embed_tokens.weight", None, "embedding", 32000, 8192)]
    for layer in range(n_layers):
        for kind, (rows, cols) in SHAPES.items():
            out.append(MatrixInfo(f"model.layers.{layer}.{NAMES[kind]}.weight", layer, kind, rows, cols))
    out.append(MatrixInfo("lm_head.weight", None, "head", 32000, 8192))
    return out


def time_ms(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> int:
    rng = random.Random(0)
    mats = matrices()
    model_params = sum(m.rows * m.cols for m in mats)
    scores_pool = [[rng.uniform(2.0, 6.0) for _ in range(N_LAYERS)] for _ in range(64)]
    state = {"i": 0}

    def next_scores():          # new scores every run, so nothing can be reused between runs
        state["i"] += 1
        return scores_pool[state["i"] % len(scores_pool)]

    def alloc_and_count():
        n = al.alphalora(next_scores(), 5 * N_LAYERS, 2.5, 1, 12)
        al.count_trainable_params(mats, n, rank=8, model_params=model_params)

    def ranks_and_export():
        r = al.allocate_ranks(next_scores(), 8 * N_LAYERS)
        al.lora_rank_config(r, mats)

    rows = [("alphalora + parameter count", *time_ms(alloc_and_count, 500)),
            ("alphalora only", *time_ms(lambda: al.alphalora(next_scores(), 5 * N_LAYERS, 2.5, 1, 12), 500)),
            ("rank allocation + peft export", *time_ms(ranks_and_export, 50))]
    print(f"{N_LAYERS} layers, {len(mats)} matrices; median of many runs (goal ≤ {GOAL_MS:.0f} ms for the first row)")
    print(f"{'task':<32}{'median ms':>12}{'max ms':>12}")
    for name, med, worst in rows:
        print(f"{name:<32}{med:>12.3f}{worst:>12.3f}")
    ok = rows[0][1] <= GOAL_MS
    print("goal met" if ok else "GOAL MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

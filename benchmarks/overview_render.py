"""Server-side render time of the Overview page for a 32-layer × 7-matrix LLaMA-sized model with the analysis cached."""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import engine  # noqa: E402
from analysis.metrics import norm_metrics  # noqa: E402

SHAPES = {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
          "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008)}
HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def synthetic_evals(rng: np.random.Generator, n: int, alpha: float, tail: int = 300) -> np.ndarray:
    """A Marchenko–Pastur-like bulk (gamma) plus a Pareto tail of exponent alpha, ascending."""
    bulk = rng.gamma(2.0, 0.5, n - tail)
    xmin = float(np.quantile(bulk, 0.98))
    pareto = xmin * (1.0 - rng.random(tail)) ** (-1.0 / (alpha - 1.0))
    return np.sort(np.concatenate([bulk, pareto]))


def synthetic_result(n_layers: int = 32, n_evals: int = 4096, seed: int = 0) -> engine.AnalysisResult:
    """An AnalysisResult shaped like LLaMA-2-7B's: 32 blocks × 7 matrices, 4096 eigenvalues each.

    α rises with depth as published for LLaMA-2-7B (about 2.1 → 4.5); norms and ranks are computed from
    the synthetic eigenvalues, the fit columns are drawn near the generating α (no fit is run: this
    benchmarks drawing, not fitting).
    """
    rng = np.random.default_rng(seed)
    rows, evals = [], {}
    for layer in range(n_layers):
        for module, (r, c) in SHAPES.items():
            a = 2.1 + 2.4 * layer / max(n_layers - 1, 1) + (-0.4 if module in "qk" else 0.2) + rng.normal(0, 0.15)
            a = max(a, 1.3)
            name = f"model.layers.{layer}.{HF_NAMES[module]}.weight"
            ev = synthetic_evals(rng, n_evals, a)
            evals[name] = ev
            xmin = float(ev[-300])
            row = {"name": name, "layer": layer, "module": module, "rows": r, "cols": c, "alpha": a,
                   "alpha_hill": a + rng.normal(0, 0.1), "xmin": xmin, "D": rng.uniform(0.02, 0.08),
                   "num_pl_spikes": 300, "sigma": (a - 1) / np.sqrt(300), "alpha_mid": a + 0.5,
                   "alpha_hill_xmin": xmin, "alpha_hill_D": rng.uniform(0.02, 0.08), "num_evals": n_evals,
                   "label": "ok" if 2 <= a <= 6 else ("over-trained" if a < 2 else "under-trained"),
                   "status": "ok", "fit": "ok", "dtype": "bfloat16", "notes": "", "ww_comparable": True}
            row.update(norm_metrics(ev, a, r, c))
            rows.append(row)
    return engine.AnalysisResult(model="synthetic LLaMA-2-7B-like (32 × 7)", flags=[],
                                 identity={"synthetic": seed}, settings={}, rows=rows,
                                 evals=evals, num_parameters=6_738_415_616,
                                 elapsed_s=0.0, from_cache=True)


def time_builders(result, repeats: int) -> dict[str, float]:
    """Median seconds of each overview building block (figures built and serialised to JSON, table, downloads)."""
    from app import page_overview

    import plotly.io as pio
    figs = page_overview.figures(result, "alphalora_score", "alpha", 3)[:2]
    steps = {
        "build layer α figure + heatmap": lambda: page_overview.figures(result, "alphalora_score", "alpha", 3),
        "figures → JSON (as Streamlit sends)": lambda: [pio.to_json(f, validate=False) for f in figs],
        "metrics table": lambda: page_overview.table(result),
        "CSV + JSON downloads": lambda: page_overview.downloads(result, page_overview.table(result)),
    }
    out = {}
    for label, fn in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    return out


def time_app_runs(result, repeats: int) -> list[float]:
    """Whole Overview page runs through Streamlit's AppTest, the analysis already in memory."""
    from streamlit.testing.v1 import AppTest

    engine.analyze = lambda *a, **k: result            # the app's analysis runner calls engine.analyze
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()                                            # first run: "analyses" (instantly) and memoises
    if at.exception or len(at.get("plotly_chart")) != 2 or at.title[0].value != "Layer quality overview":
        raise SystemExit(f"the overview did not render: {at.exception}")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        assert len(at.get("plotly_chart")) == 2 and len(at.dataframe) == 1
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--evals", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import streamlit.runtime.scriptrunner_utils.script_run_context  # noqa: F401 - create its logger, then quiet it
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)
    os.environ.setdefault("SPECTRASCOPE_DATA", tempfile.mkdtemp(prefix="spectrascope-bench-"))
    t0 = time.perf_counter()
    result = synthetic_result(args.layers, args.evals)
    print(f"synthetic result: {len(result.matrices)} matrices × {args.evals} eigenvalues "
          f"(built in {time.perf_counter() - t0:.1f} s, not timed)\n")
    parts = time_builders(result, args.repeats)
    runs = time_app_runs(result, args.repeats)
    print(f"{'step':<40} {'median s':>10}")
    print("-" * 51)
    for label, s in parts.items():
        print(f"{label:<40} {s:>10.3f}")
    print(f"{'sum of the building blocks':<40} {sum(parts.values()):>10.3f}")
    print(f"{'whole Overview page (AppTest rerun)':<40} {statistics.median(runs):>10.3f}")
    print(f"\nAppTest reruns (s): {', '.join(f'{t:.3f}' for t in runs)}; budget 1.5 s → "
          f"{'OK' if statistics.median(runs) <= 1.5 else 'TOO SLOW'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Draw a study's comparison (CI bars, accuracy vs trainable parameters) as a PNG and its table as Markdown.

Plotly's PNG export needs kaleido, which is not installed, so this draws with matplotlib:

    SPECTRASCOPE_DATA=... python benchmarks/study_figure.py 1 --png docs/study_default.png --md docs/study_default.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLOURS = {"LoRA": "#1f77b4", "LoRA (params-matched)": "#17becf", "MoE-LoRA uniform": "#ff7f0e", "MoE-LoRA MoLA": "#2ca02c",
           "MoE-LoRA AlphaLoRA": "#d62728", "Full fine-tune": "#9467bd", "Base: linear probe": "#7f7f7f",
           "Base: untrained head": "#bcbd22", "Base: zero-shot": "#7f7f7f"}


def error_bars(data, col: str):
    """(below, above) bar lengths: Student-t over seeds where n ≥ 2, Wilson for the baselines, none for n = 1."""
    import numpy as np

    half = data[f"{col} ci"].to_numpy(dtype=float)
    low, high = np.where(np.isnan(half), 0.0, half), np.where(np.isnan(half), 0.0, half)
    if f"ci_lo {col}" in data:
        lo, hi = data[f"ci_lo {col}"].to_numpy(dtype=float), data[f"ci_hi {col}"].to_numpy(dtype=float)
        wilson = ~np.isnan(lo) & np.isnan(half)
        low[wilson], high[wilson] = (data[col].to_numpy(dtype=float) - lo)[wilson], (hi - data[col].to_numpy(dtype=float))[wilson]
    return low, high


def draw(table, metric: str, title: str, path: Path) -> None:
    """Left: mean ± 95 % CI per method; right: the metric vs trainable parameters with the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.study import dodge, pareto_front

    col = f"test {metric}"
    data = table.dropna(subset=[col]).reset_index(drop=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.15, 1]})
    colours = [COLOURS.get(m, "#8c564b") for m in data["method"]]
    low, high = error_bars(data, col)
    left.bar(range(len(data)), data[col], yerr=[low, high], color=colours, capsize=4, edgecolor="white")
    for i, (v, e) in enumerate(zip(data[col], high)):
        left.text(i, v + e + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    left.set_xticks(range(len(data)), data["method"], rotation=30, ha="right", fontsize=9)
    left.set_ylabel(f"test {metric}")
    left.set_ylim(bottom=min(0.0, float(data[col].min())))
    left.set_title(f"test {metric}: mean ± 95 % CI over seeds (baselines: Wilson on the test rows)", fontsize=10)
    left.grid(axis="y", alpha=0.3)

    trained = data[data["trainable_params"] > 0]
    trained = trained.assign(x=dodge(trained["trainable_params"]))
    for _, row in trained.iterrows():
        right.errorbar(row["x"], row[col], yerr=0 if row[f"{col} ci"] != row[f"{col} ci"]
                       else row[f"{col} ci"], fmt="o", ms=8, capsize=3, color=COLOURS.get(row["method"]),
                       label=row["method"])
    front = pareto_front(trained, "trainable_params", col)
    if len(front) > 1:
        right.step(front["trainable_params"], front[col], where="post", ls="--", color="black", lw=1,
                   label="Pareto front")
    for _, row in data[data["trainable_params"] == 0].iterrows():
        right.axhline(row[col], ls=":", color=COLOURS.get(row["method"], "grey"), label=row["method"])
    right.set_xscale("log")
    right.set_xlabel("trainable parameters (log scale)")
    right.set_ylabel(f"test {metric}")
    right.set_title(f"test {metric} vs trainable parameters", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from training.study import format_table, load_study, study_table, to_markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=int)
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--png", type=Path, default=Path("docs/study_default.png"))
    p.add_argument("--md", type=Path, help="also write the table (test split) as Markdown here")
    args = p.parse_args(argv)
    record = load_study(args.study)
    table = study_table(args.study)
    spec = record["spec"]
    title = (f"{spec['model'] or 'all-MiniLM-L6-v2'} on {spec['task']}: {spec['seeds']} seeds, "
             f"{str(spec['max_steps']) + ' steps' if spec['max_steps'] else 'one epoch'}, "
             f"{record.get('options', {}).get('max_train_rows') or 'all'} training rows, budget {spec['budget'] or 5 * record['n_layers']} experts")
    draw(table, args.metric, title, args.png)
    print(f"wrote {args.png}")
    if args.md:
        args.md.write_text(to_markdown(format_table(table, ("test",))) + "\n")
        print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

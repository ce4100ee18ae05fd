"""Learned vs predicted: the per-layer ranks an AdaLoRA run kept beside α-driven ranks with the same total budget."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from analysis.types import SpectrascopeError

NAME = "adalora"
TARGETS = "the adapted matrices"          # where the layer scores come from (score_source)
ALL_BLOCK = "all block matrices"


@dataclass
class LearnedVsPredicted:
    """One AdaLoRA run's learned ranks per layer and the α-driven allocation of the same total."""

    run: str                              # the run folder's name
    model: str                            # the base model the α scores were measured on
    beta: float
    total: int                            # Σ learned ranks = Σ predicted ranks
    target: int | None                    # the budget AdaLoRA pruned to (target_r × matrices), if recorded
    matrices: int                         # adapted matrices
    score_source: str                     # TARGETS, ALL_BLOCK, or "given"
    rows: list[dict] = field(default_factory=list)   # layer, alpha_score, learned, predicted, difference
    spearman: float | None = None         # rank correlation of learned vs predicted over the layers (None: undefined)
    notes: list[str] = field(default_factory=list)

    def frame(self):
        """The rows as a pandas DataFrame (one row per layer)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["layer", "alpha_score", "learned", "predicted", "difference"])


def adalora_runs(root: str | Path | None = None) -> list:
    """Finished AdaLoRA runs (training.runs_index.list_runs) whose result.json holds the learned ranks."""
    from training.runs_index import list_runs

    return [r for r in list_runs(root) if r.method == NAME and _learned(_read(r.folder / "result.json"))]


def _read(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _learned(result: dict) -> list[int] | None:
    layers = result.get("adalora_layer_ranks")
    if isinstance(layers, list) and layers and all(isinstance(n, int) and n >= 0 for n in layers):
        return [int(n) for n in layers]
    return None


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (as Spearman's ρ needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None with fewer than 3 values or a constant side."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = average_ranks(list(a)), average_ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    if sa == 0 or sb == 0:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / (sa * sb)


def target_scores(analysis_rows: list[dict], modules: list[str], n_layers: int,
                  fallback: list[float] | None = None) -> tuple[list[float], str, list[str]]:
    """Per-layer α score over the adapted matrices only (mean PL_Alpha_Hill of the analysis rows whose block and
    local name match an adapted module); layers without a usable fit take `fallback` (AlphaLoRA's all-matrix score).
    Returns (scores, source, notes)."""
    from training.moe_lora.model import block_index

    wanted = {where for name in modules if (where := block_index(name)) is not None}
    per: dict[int, list[float]] = {}
    for row in analysis_rows:
        name = str(row.get("name", ""))
        where = block_index(name[:-len(".weight")] if name.endswith(".weight") else name)
        alpha = row.get("alpha_hill")
        if where in wanted and isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0:
            per.setdefault(where[0], []).append(float(alpha))
    missing = [layer for layer in range(n_layers) if layer not in per]
    if len(missing) == n_layers:
        if fallback is None or len(fallback) != n_layers:
            raise SpectrascopeError("none of the adapted matrices is in the base model's analysis, and it has no "
                                    "layer scores for every layer: analyse the run's base model")
        return list(fallback), ALL_BLOCK, ["no adapted matrix matched the analysis: the layer score is AlphaLoRA's "
                                           "mean over all block matrices"]
    notes = []
    if missing:
        if fallback is None or len(fallback) != n_layers:
            raise SpectrascopeError(f"layers {missing} have no usable α fit among the adapted matrices")
        notes.append(f"layers {missing}: no usable α fit among the adapted matrices, AlphaLoRA's all-matrix score "
                     "is used")
    scores = [sum(per[i]) / len(per[i]) if i in per else float(fallback[i]) for i in range(n_layers)]
    return scores, TARGETS, notes


def learned_vs_predicted(run_folder: str | Path, beta: float | None = None, scores: list[float] | None = None,
                         analysis=None) -> LearnedVsPredicted:
    """The run's learned rank per layer (result.json adalora_layer_ranks) beside analysis.allocation.allocate_ranks
    on the base model's layer α with the same total and minimum 0, and their Spearman ρ.

    `scores` (one per layer) replaces the α scores; otherwise they come from `analysis` (an AnalysisResult of the
    base model; default: analysis.engine.analyze of the run's model) over the matrices the run adapted.
    """
    from analysis import allocation as al

    folder = Path(run_folder)
    result, manifest = _read(folder / "result.json"), _read(folder / "manifest.json")
    learned = _learned(result)
    if learned is None:
        raise SpectrascopeError(f"{folder.name} has no learned AdaLoRA ranks (result.json lacks "
                                "adalora_layer_ranks): pick a finished AdaLoRA run")
    ranks = result.get("adalora_ranks") if isinstance(result.get("adalora_ranks"), dict) else {}
    model = str(manifest.get("model") or result.get("model") or "")
    beta = float(al.DEFAULT_BETA if beta is None else beta)
    notes: list[str] = []
    if scores is not None:
        source = "given"
        scores = [float(s) for s in scores]
    else:
        if analysis is None:
            from analysis import engine

            if not model:
                raise SpectrascopeError(f"{folder.name} does not record its base model (manifest.json)")
            analysis = engine.analyze(model)
        fallback = analysis.layer_scores()
        scores, source, notes = target_scores(analysis.rows, list(ranks), len(learned), fallback)
    if len(scores) != len(learned):
        raise SpectrascopeError(f"the base model has {len(scores)} layer scores but the run has ranks for "
                                f"{len(learned)} layers: is it the run's base model?")
    total = sum(learned)
    predicted = al.allocate_ranks(scores, total, beta, 0) if total else [0] * len(learned)
    rows = [{"layer": i, "alpha_score": scores[i], "learned": learned[i], "predicted": int(predicted[i]),
             "difference": learned[i] - int(predicted[i])} for i in range(len(learned))]
    budget = result.get("adalora_budget") if isinstance(result.get("adalora_budget"), dict) else {}
    rho = spearman([float(n) for n in learned], [float(n) for n in predicted])
    if rho is None:
        notes.append("Spearman ρ is undefined here (fewer than 3 layers, or one side is the same in every layer)")
    return LearnedVsPredicted(run=folder.name, model=model, beta=beta, total=total, target=budget.get("target"),
                              matrices=len(ranks), score_source=source, rows=rows, spearman=rho, notes=notes)

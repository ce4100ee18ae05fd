"""What an allocation workbench asks for: a model's facts, the strategy's allocation, budget checks, the comparison."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from analysis import allocation as al
from analysis.types import MatrixInfo, SpectrascopeError

STRATEGIES = ("alphalora", "uniform", "mola", "manual")
COMPARED = (("AlphaLoRA", "alphalora"), ("uniform", "uniform"), ("MoLA", "mola"))   # (name, strategy)
OTHER_CHOICES = "choose uniform, a MoLA preset or manual."


@dataclass(frozen=True)
class Settings:
    """What the controls ask for."""

    strategy: str               # alphalora | uniform | mola | manual
    budget: int
    beta: float
    min_experts: int
    max_experts: int | None
    pattern: str                # MoLA digits as typed (validated by analysis.allocation)

    @property
    def mola(self) -> str:
        return f"mola:{self.pattern}"

    def with_strategy(self, strategy: str) -> "Settings":
        return Settings(strategy, self.budget, self.beta, self.min_experts, self.max_experts, self.pattern)


@dataclass(frozen=True)
class ModelFacts:
    """What an allocation needs from an analysis: layers, scores, matrix shapes, parameter count."""

    label: str
    n_layers: int
    scores: list[float] | None
    scores_problem: str | None
    matrices: list[MatrixInfo]
    model_params: int
    kinds: list[str]            # adaptable linear kinds present in the layers


def _layer(value: Any) -> int | None:
    """A row's layer index (None outside the blocks, also when a table gave NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def scores_problem(raw: Sequence[Any], n_layers: int) -> str | None:
    """Why per-layer scores cannot drive AlphaLoRA (a count mismatch, or layers without a finite score > 0), or
    None when they can."""
    if len(raw) != n_layers:
        return (f"the analysis has layer scores for {len(raw)} of {n_layers} layers, so AlphaLoRA cannot allocate; "
                + OTHER_CHOICES)
    bad = [i for i, s in enumerate(raw)
           if not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0)]
    if bad:
        return (f"layers {bad} have no usable AlphaLoRA score (no power-law fit), so AlphaLoRA cannot allocate; "
                + OTHER_CHOICES)
    return None


def model_facts(result) -> ModelFacts:
    """Layer count, AlphaLoRA layer scores (or why they are unusable), matrices and parameter count of an analysis
    (anything with .model, .rows, .layer_scores() and .num_parameters, e.g. engine.AnalysisResult)."""
    mats = [MatrixInfo(str(r["name"]), _layer(r["layer"]), str(r["module"]), int(r["rows"]), int(r["cols"]))
            for r in result.rows]
    n_layers = al.n_layers_of(mats)
    try:
        raw = list(result.layer_scores())
    except (KeyError, AttributeError):
        raw = []
    problem = scores_problem(raw, n_layers)
    scores = None if problem else [float(s) for s in raw]
    model_params = result.num_parameters or sum(m.rows * m.cols for m in mats)
    kinds = [k for k in al.LINEAR_KINDS if any(m.module == k and m.layer is not None for m in mats)]
    return ModelFacts(result.model, n_layers, scores, problem, mats, int(model_params), kinds)


def base_allocation(s: Settings, m: ModelFacts) -> al.Allocation:
    """The allocation the controls describe (before hand edits); SpectrascopeError on bad settings. Manual starts
    from uniform and remembers its budget as the target."""
    if s.strategy == "alphalora":
        if m.scores is None:
            raise SpectrascopeError(m.scores_problem)
        return al.allocate("alphalora", scores=m.scores, budget=s.budget, beta=s.beta, min_experts=s.min_experts,
                           max_experts=s.max_experts, model=m.label)
    if s.strategy == "uniform":
        return al.allocate("uniform", scores=m.scores, n_layers=m.n_layers, budget=s.budget,
                           min_experts=s.min_experts, max_experts=s.max_experts, model=m.label)
    if s.strategy == "mola":
        return al.allocate(s.mola, scores=m.scores, n_layers=m.n_layers, model=m.label)
    if s.strategy != "manual":
        raise SpectrascopeError(f"unknown strategy {s.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    seed = al.uniform(m.n_layers, s.budget, s.min_experts, s.max_experts)
    alloc = al.allocate("manual", experts=seed, scores=m.scores, n_layers=m.n_layers, model=m.label)
    alloc.params = {"target": s.budget}
    return alloc


def target(s: Settings, base: al.Allocation) -> int:
    """The total the hand edits are checked against: a MoLA preset's own total, else the budget."""
    return base.total if s.strategy == "mola" else s.budget


def describe(alloc: al.Allocation) -> str:
    """A short human name: 'AlphaLoRA (β = 2.5)', 'uniform', 'MoLA 2468', 'manual (edited from AlphaLoRA)'."""
    if alloc.strategy == "alphalora":
        return f"AlphaLoRA (β = {alloc.params.get('beta', al.DEFAULT_BETA):g})"
    if alloc.strategy.startswith("mola:"):
        return f"MoLA {alloc.strategy[5:]}"
    source = alloc.params.get("edited_from")
    if alloc.strategy == "manual" and source:
        return f"manual (edited from {'AlphaLoRA' if source == 'alphalora' else source.replace('mola:', 'MoLA ')})"
    return alloc.strategy


def edited_allocation(base: al.Allocation, counts: list[int], total: int) -> al.Allocation:
    """The table's counts as an allocation: the base itself if unchanged, else a manual one that says where it came
    from (and keeps the base's budget, β, minimum and maximum)."""
    if counts == base.experts:
        return base
    alloc = al.allocate("manual", experts=counts, scores=base.scores, n_layers=len(base.experts), model=base.model)
    kept = {k: v for k, v in base.params.items() if k in ("budget", "beta", "min", "max")}
    alloc.params = {"edited_from": base.strategy, "target": total, **kept}
    return alloc


def sum_problem(counts: list[int], total: int, s: Settings) -> str | None:
    """A warning when hand-edited counts miss the total or leave the [min, max] range, else None."""
    notes = []
    diff = sum(counts) - total
    if diff:
        notes.append(f"The experts sum to {sum(counts)}, {abs(diff)} {'more' if diff > 0 else 'fewer'} than the "
                     f"budget of {total}: {'remove' if diff > 0 else 'add'} {abs(diff)} to match it (or keep it "
                     "on purpose: the allocation is saved as typed).")
    if s.strategy != "mola":
        low = [i for i, c in enumerate(counts) if c < s.min_experts]
        high = [i for i, c in enumerate(counts) if s.max_experts is not None and c > s.max_experts]
        if low:
            notes.append(f"Layers {low} are below the minimum of {s.min_experts}.")
        if high:
            notes.append(f"Layers {high} are above the maximum of {s.max_experts}.")
        if 0 in counts:
            notes.append(f"Layers {[i for i, c in enumerate(counts) if c == 0]} have no experts (no adapter).")
    return " ".join(notes) or None


def comparison(s: Settings, m: ModelFacts, rank: int, modules: list[str]) -> list[dict]:
    """AlphaLoRA vs uniform vs the chosen MoLA preset at the same settings: per strategy its name, description,
    experts per layer and al.ParamCount, or the error that stopped it."""
    rows = []
    for name, strategy in COMPARED:
        try:
            alloc = base_allocation(s.with_strategy(strategy), m)
            count = al.count_trainable_params(m.matrices, alloc.experts, rank, modules, m.model_params)
            rows.append({"name": name, "strategy": describe(alloc), "experts": alloc.experts, "count": count})
        except SpectrascopeError as err:
            rows.append({"name": name, "strategy": f"MoLA {s.pattern}" if strategy == "mola" else name,
                         "error": str(err)})
    return rows


def comparison_records(rows: list[dict]) -> list[dict]:
    """The comparison as table records (totals, range, parameters, share in %); a failed strategy keeps its row
    with empty numbers and its error as the note."""
    out = []
    for r in rows:
        if "error" in r:
            out.append({"strategy": r["strategy"], "total experts": None, "experts per layer": "—",
                        "LoRA experts": None, "routers": None, "trainable total": None, "share of model": None,
                        "note": r["error"]})
            continue
        c, e = r["count"], r["experts"]
        out.append({"strategy": r["strategy"], "total experts": sum(e), "experts per layer": f"{min(e)}–{max(e)}",
                    "LoRA experts": c.experts, "routers": c.routers, "trainable total": c.total,
                    "share of model": None if c.share is None else 100 * c.share, "note": ""})
    return out


def layer_count(model: str | None) -> int | None:
    """Transformer layers of a model without analysing it: its config's num_hidden_layers (n_layer for GPT-2),
    else counted from the block indices of its matrix names; None when neither says."""
    import json
    from pathlib import Path

    from analysis.sources import open_source

    config = Path(str(model)).expanduser() / "config.json" if model else None
    source = None
    try:
        values = json.loads(config.read_text()) if config is not None and config.is_file() else None
    except (OSError, ValueError):
        values = None
    if not isinstance(values, dict):
        source = open_source(model)
        values = source.config or {}
    layers = values.get("num_hidden_layers") or values.get("n_layer")
    if isinstance(layers, int) and layers > 0:
        return layers
    try:
        return al.n_layers_of((source or open_source(model)).matrices())
    except SpectrascopeError:
        return None

"""What a study runs: its arms, budget defaults, allocations, the parameter-matched LoRA rank and a time estimate."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from analysis.config import DEFAULT_MODEL
from analysis.types import SpectrascopeError
from training import registry

# Every arm the registered methods offer, key -> Arm (label, method, allocation strategy, reference arm), in the
# order of the comparison table; METHODS is the same as key -> (label, method, allocation strategy).
ARMS = registry.study_arms()
METHODS = {key: (arm.label, arm.method, arm.allocation) for key, arm in ARMS.items()}
# The arms of a study when none are named: the comparison measured in docs/study_default.md.
DEFAULT_ARMS = ["lora", "lora_matched", "moe_uniform", "moe_mola", "moe_alphalora", "full"]
MOLA_RAMP = (1, 2, 3, 4)                 # the shape of MoLA's "2468": experts grow linearly with depth
# Every adapter arm adapts the same matrices: each Linear inside the blocks (BERT: q, k, v, attention output,
# intermediate, output), so LoRA and MoE-LoRA differ in their method, not in what they touch.
ADAPTER_TARGETS = ["all-linear"]
# The study's default budget, chosen from the sweep in docs/sweep_default.md (benchmarks/study_sweep.py, 120
# steps): one epoch over a 2,000-row training subset (125 steps of 16), 500 validation rows, the whole test split.
STUDY_DEFAULTS = {"max_steps": None, "max_train_rows": 2000, "max_eval_rows": 500, "max_test_rows": None,
                  "eval_every": 40}
# Rough seconds per run beyond its steps (loading, validation passes, test) of the default model on the project's
# 2-core CPU; the seconds per step are each Method's step_seconds. Other models scale by their parameter count.
# plan_study prefers the median of this machine's finished runs of the same model and method.
RUN_OVERHEAD_SECONDS = 25.0
DEFAULT_MODEL_PARAMS = 22.7e6


@dataclass
class StudySpec:
    """What a study compares: one model and task, an expert budget, seeds, and shared training options."""

    model: str | None = None
    task: str = "rotten_tomatoes"
    budget: int | None = None            # MoE-LoRA experts over all layers; None: 5 × layers
    seeds: int = 3
    max_steps: int | None = STUDY_DEFAULTS["max_steps"]
    beta: float = 2.5
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    options: dict = field(default_factory=dict)   # other TrainConfig fields for every job (row limits, lr…);
    #                                               STUDY_DEFAULTS fill the row limits and eval_every not given

    def job_options(self) -> dict:
        """The options every job of the study gets: the study defaults, then the user's own."""
        return {**{k: v for k, v in STUDY_DEFAULTS.items() if k != "max_steps"}, **self.options}

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise SpectrascopeError(f"unknown study method(s) {bad or '(none)'}: use {', '.join(METHODS)}")
        if not isinstance(self.seeds, int) or not 1 <= self.seeds <= 20:
            raise SpectrascopeError(f"seeds must be a whole number from 1 to 20, got {self.seeds!r}")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise SpectrascopeError(f"the expert budget must be a positive whole number, got {self.budget!r}")
        taken = {"model", "task", "seed", "method", "max_steps", "allocation", "allocation_file", "name"}
        clash = sorted(taken & set(self.options))
        if clash:
            raise SpectrascopeError(f"option(s) {clash} are set by the study itself; use the study's own fields")


# ----------------------------------------------------------------------------------------------- allocations

def mola_preset(n_layers: int, budget: int) -> str:
    """A MoLA preset in the "2468" style for this depth: 4 contiguous blocks (fewer for shallow models) whose
    expert counts grow like 1:2:3:4, scaled to the budget (exactly when some digits 1–9 can reach it).

    32 layers with budget 160 gives "mola:2468", the published configuration.
    """
    from analysis.allocation import mola_blocks

    blocks = min(len(MOLA_RAMP), n_layers)
    sizes = mola_blocks(n_layers, blocks)
    ramp = MOLA_RAMP[:blocks]
    scale = budget / sum(s * r for s, r in zip(sizes, ramp))
    ideal = [scale * r for r in ramp]
    best = None
    for digits in itertools.combinations_with_replacement(range(1, 10), blocks):   # non-decreasing
        total = sum(s * d for s, d in zip(sizes, digits))
        key = (abs(total - budget), sum((d - x) ** 2 for d, x in zip(digits, ideal)))
        if best is None or key < best[0]:
            best = (key, digits)
    return "mola:" + "".join(str(d) for d in best[1])


def study_allocations(spec: StudySpec, scores: list[float]) -> dict[str, dict]:
    """The allocation JSON of each MoE-LoRA method of the study (uniform, MoLA, AlphaLoRA)."""
    from analysis.allocation import allocate

    n_layers = len(scores)
    budget = spec.budget or 5 * n_layers
    model = spec.model or DEFAULT_MODEL
    out = {}
    for key in spec.methods:
        strategy = METHODS[key][2]
        if strategy == "uniform":
            out[key] = allocate("uniform", n_layers=n_layers, budget=budget, model=model).to_dict()
        elif strategy == "mola":
            out[key] = allocate(mola_preset(n_layers, budget), n_layers=n_layers, model=model).to_dict()
        elif strategy == "alphalora":
            out[key] = allocate("alphalora", scores=scores, budget=budget, beta=spec.beta, model=model).to_dict()
    return out


def describe_allocation(config: dict) -> str:
    """Short text for a run's setting, from its method (Method.describe): 'rank 8', '4 experts per layer, top-2',
    'alphalora β=2.5: 4-5-6-5-4-6 (30)', 'all weights'…"""
    method = registry.get(config.get("method", "lora"))
    return method.describe(config) if method.describe else method.label


def matched_lora_rank(matrices: list, allocation: dict, rank: int = 8) -> tuple[int, int, int]:
    """(LoRA rank, its adapter parameters, the MoE-LoRA allocation's) with LoRA on the same matrices as close as
    a whole rank gets to the MoE-LoRA adapter's parameters: r·Σ(d_in + d_out) against Σ N_l·(r·(d_in + d_out) +
    d_in) (experts and routers, analysis.allocation.count_trainable_params)."""
    from analysis.allocation import count_lora_params, count_trainable_params, n_layers_of

    moe = count_trainable_params(matrices, allocation["experts"], rank).total
    per_rank = count_lora_params(matrices, [1] * n_layers_of(matrices))
    r = max(1, round(moe / per_rank))
    return r, r * per_rank, moe


def _model_matrices(model: str | None) -> list:
    from analysis.sources import open_source

    return open_source(model).matrices()


def arm_configs(spec: StudySpec, files: dict[str, str], matrices: list) -> dict[str, dict]:
    """The job options of each arm (beyond the common ones): method, allocation file, targets, rank."""
    out = {}
    for key in spec.methods:
        arm = ARMS[key]
        takes = registry.get(arm.method).takes
        config: dict = {"method": arm.method}
        if "target_modules" in takes and "target_modules" not in spec.options:
            config["target_modules"] = list(ADAPTER_TARGETS)
        if key in files:
            config["allocation_file"] = files[key]
        if arm.matched:
            uniform = study_allocations(StudySpec(budget=spec.budget, methods=["moe_uniform"]),
                                        [1.0] * len({m.layer for m in matrices if m.layer is not None}))
            base_rank = spec.options.get("rank", 8)
            config["rank"] = matched_lora_rank(matrices, uniform["moe_uniform"], base_rank)[0]
            # α stays the rank-8 arms' α (LoRA's own rule: fix α when varying r, so the learning rate carries
            # over). With α = 2r the update grows with r: r = 42 at lr 1e-3 scored 0.704 validation, α = 16
            # 0.782 (docs/sweep_default.md).
            config["alpha"] = spec.options.get("alpha") or 2.0 * base_rank
        out[key] = config
    return out


def plan_study(spec: StudySpec, store=None) -> dict:
    """How many runs a study queues and roughly how long they take: {"runs", "seconds", "per_run_seconds",
    "steps" (optimizer steps per run)}.

    Per arm: the median seconds per step of this machine's finished runs of the same model and method times the
    steps, plus their median fixed cost; without such runs, STEP_SECONDS / RUN_OVERHEAD_SECONDS (the default
    model on a 2-core CPU) scaled by the model's parameter count. A rough guide, not a promise.
    """
    from statistics import median

    from training.jobs import JobStore

    spec.check()
    store = store or JobStore()
    options = spec.job_options()
    rows = options.get("max_train_rows") or 10_000                  # no limit: a typical task's training split
    steps = spec.max_steps or math.ceil(rows / options.get("batch_size", 16)) * options.get("epochs", 1)
    history: dict[str, list[tuple[float, float]]] = {}
    for job in store.list(reconcile=False):
        result = job.result() or {}
        if job.status == "done" and (job.config.get("model") or None) == (spec.model or None) \
                and result.get("steps") and result.get("seconds"):
            history.setdefault(job.config.get("method"), []).append((result["seconds"], result["steps"]))
    try:
        scale = sum(m.rows * m.cols for m in _model_matrices(spec.model)) / DEFAULT_MODEL_PARAMS
    except SpectrascopeError:
        scale = 1.0
    per_run = {}
    for key in spec.methods:
        method = ARMS[key].method
        if len(history.get(method, [])) >= 2:
            per_step = median(sec / n for sec, n in history[method])
            per_run[key] = per_step * steps
        else:
            per_run[key] = (registry.get(method).step_seconds * steps + RUN_OVERHEAD_SECONDS) * scale
    total = spec.seeds * sum(per_run.values()) + RUN_OVERHEAD_SECONDS * scale      # + the base evaluation
    return {"runs": spec.seeds * len(spec.methods), "seconds": total, "per_run_seconds": per_run, "steps": steps}

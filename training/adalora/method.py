"""The registry entry of AdaLoRA (peft): SVD-form adapters whose ranks are pruned to a budget while training."""
from __future__ import annotations

import math

from training.adalora.config import AdaLoraOptions
from training.registry import Arm, Method

NAME = "adalora"


def _targets(cfg, model) -> list[str]:
    from training.lora.config import default_target_modules
    from training.lora.model import resolve_targets

    return resolve_targets(model, cfg.target_modules) or default_target_modules(model.config.model_type)


def attach(cfg, model, ctx):
    from training.adalora.model import apply_adalora, total_steps

    return apply_adalora(model, cfg.options, total=total_steps(cfg, ctx), rank=cfg.rank,
                         task_type=ctx.peft_task_type, target_modules=_targets(cfg, model), alpha=cfg.alpha,
                         dropout=cfg.dropout)


def save(cfg, model, folder) -> None:
    """A peft adapter folder: each matrix's triplets cut to its learned rank (adapter_config.json rank_pattern)."""
    model.save_pretrained(folder, safe_serialization=True)


def load(cfg, base, folder):
    from training.adalora.model import load_adalora

    return load_adalora(base, folder)


def planned_steps(cfg) -> int | None:
    """The run's optimizer steps as far as the config tells before training (max_steps, or epochs × batches of the
    training rows); None when the task's rows cannot be read here."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    try:
        from training.trainer import load_task, split_rows

        rows = split_rows(load_task(cfg), cfg)["train"]
    except Exception:                                  # the trainer's own checks report a bad task
        return None
    return int(cfg.epochs) * max(1, math.ceil(len(rows) / cfg.batch_size))


def check(cfg, hf_config) -> None:
    """Before queueing: the target rank is below init_r and the schedule leaves a budgeting phase."""
    options = cfg.options
    options.target(cfg.rank)
    total = planned_steps(cfg) if (cfg.max_steps or options.tinit is not None or options.tfinal is not None) else None
    if total is not None:
        options.schedule(total)


def on_step(model, step: int, total: int) -> None:
    from training.adalora.model import update

    update(model, step, total)


def report(model) -> dict:
    """The learned ranks (per matrix, per layer, the budget); first the final mask is applied again, so that a
    best state restored from before the last pruning is the model that is saved and tested."""
    from training.adalora.model import apply_final_mask, rank_report

    apply_final_mask(model)
    return rank_report(model)


def describe(config: dict) -> str:
    """'rank 12 → 8 (AdaLoRA)': the starting rank and the average rank the budget prunes to."""
    own = config.get("method_options") or {}
    init_r = own.get("init_r") or AdaLoraOptions.init_r
    target = own.get("target_r") or config.get("rank", 8)
    return f"rank {init_r} → {target} avg"


METHOD = Method(
    name=NAME, label="AdaLoRA", summary="SVD-form LoRA whose ranks are pruned to a budget by importance (peft)",
    default_lr=1e-2,      # best validation of {3e-3, 1e-2, 3e-2} (docs/methods_intruders.md): its ΔW = P·Λ·Q starts
                          # at Λ = 0 and moves far less per step than LoRA's at 1e-3 (benchmarks/methods_step_size.py)
    artifact_dir="adapter", attach=attach, save=save, load=load,
    takes=("rank", "alpha", "dropout", "target_modules"), options=AdaLoraOptions,
    weights="merged", check=check, on_step=on_step, report=report, describe=describe,
    loss_note="the orthogonality penalty on P and Q (orth_reg_weight, inside peft's forward)",
    step_seconds=0.5,
    arms=(Arm(NAME, "AdaLoRA", NAME, reference="lora"),),
)

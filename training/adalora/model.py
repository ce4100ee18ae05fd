"""AdaLoRA through peft: injection, the per-step budget update, the learned ranks, and reloading a saved adapter."""
from __future__ import annotations

import math
import types
import warnings
from pathlib import Path

from torch import nn

from training.adalora.config import AdaLoraOptions

ADAPTER = "default"                  # peft's adapter name


def total_steps(cfg, ctx) -> int:
    """The optimizer steps the trainer will run (it counts them after attach): max_steps, else epochs × batches of
    the encoded training split (the trainer's own count; the rows when no tokenizer is given)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    rows = (ctx.rows or {}).get("train") or []
    n = len(rows)
    if rows and ctx.task is not None and ctx.tokenizer is not None:
        from training.scoring import encode

        n = len(encode(ctx.task, rows, ctx.tokenizer, cfg, ctx.decoder)["input_ids"])
    return int(cfg.epochs) * max(1, math.ceil(n / cfg.batch_size))


def _task_loss_outside_training(self, *args, **kwargs):
    """AdaLoraModel.forward adds its orthogonality penalty to outputs.loss: in training only. Evaluation scores the
    task loss, and peft's forward fails on a reloaded (inference-mode) adapter, which has no trainable adapter."""
    from peft.tuners.adalora import AdaLoraModel

    if self.training and hasattr(self, "trainable_adapter_name"):
        return AdaLoraModel.forward(self, *args, **kwargs)
    return self.model.forward(*args, **kwargs)


def _penalty_in_training_only(peft_model: nn.Module) -> nn.Module:
    tuner = peft_model.base_model
    tuner.forward = types.MethodType(_task_loss_outside_training, tuner)
    return peft_model


def apply_adalora(model: nn.Module, options: AdaLoraOptions, *, total: int, rank: int, task_type: str,
                  target_modules: list[str], alpha: float | None, dropout: float) -> nn.Module:
    """`model` as a peft AdaLoRA model (SVD-form triplets P·Λ·Q at init_r on the targets; for "SEQ_CLS" the head
    trains too), scheduled for `total` steps."""
    from peft import get_peft_model

    config = options.to_peft(total=total, rank=rank, task_type=task_type, target_modules=target_modules,
                             alpha=alpha, dropout=dropout)
    return _penalty_in_training_only(get_peft_model(model, config))


def update(model: nn.Module, step: int, total: int) -> None:
    """peft's per-step contract (after backward and optimizer.step, before zero_grad): update the importance scores
    and, on budget steps, mask the least important triplets; from total − tfinal on, keep the final mask."""
    tuner = model.base_model
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if config.total_step != total:                    # attach counted differently: follow the trainer's count
        tuner.rankallocator.set_total_step(total)
    tuner.update_and_allocate(step)


def apply_final_mask(model: nn.Module) -> None:
    """Zero the singular values the final rank pattern drops, so the model in memory is the one save_pretrained
    writes (it keeps only the pattern's triplets). Needed after the trainer restores an earlier best state."""
    tuner = model.base_model
    pattern = getattr(tuner.peft_config.get(ADAPTER), "rank_pattern", None)
    if pattern and hasattr(tuner, "rankallocator"):
        tuner.rankallocator.mask_using_rank_pattern(tuner.model, pattern)


def module_of(key: str) -> str:
    """The adapted module of a rank_pattern key or parameter name ('…attention.self.query.lora_E.default')."""
    name = key.removeprefix("base_model.model.")
    for suffix in (f".lora_E.{ADAPTER}", ".lora_E"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def learned_ranks(model: nn.Module) -> dict[str, int]:
    """Rank kept per adapted matrix (module name → rank): peft's final rank_pattern (the triplets save_pretrained
    keeps), or each matrix's full rank when no budget step ran."""
    tuner = model.base_model
    pattern = getattr(tuner.peft_config.get(ADAPTER), "rank_pattern", None)
    if pattern:
        return {module_of(key): int(sum(bool(x) for x in mask)) for key, mask in pattern.items()}
    return {module_of(name): int(p.shape[0]) for name, p in tuner.model.named_parameters()
            if name.endswith(f".lora_E.{ADAPTER}")}


def layer_totals(ranks: dict[str, int], n_layers: int | None = None) -> list[int]:
    """Sum of the ranks per transformer block, layer 0..L−1 (L: n_layers, else the last adapted block + 1)."""
    from training.moe_lora.model import block_index

    per: dict[int, int] = {}
    for name, rank in ranks.items():
        where = block_index(name)
        if where is not None:
            per[where[0]] = per.get(where[0], 0) + int(rank)
    n = max(int(n_layers or 0), max(per, default=-1) + 1)
    return [per.get(i, 0) for i in range(n)]


def rank_report(model: nn.Module) -> dict:
    """The learned ranks as result.json keys: per matrix, per layer, and the budget they were pruned to."""
    tuner = model.base_model
    config = tuner.peft_config[ADAPTER]
    ranks = learned_ranks(model)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return {"adalora_ranks": ranks, "adalora_layer_ranks": layer_totals(ranks, n_layers),
            "adalora_budget": {"init_r": int(config.init_r), "target_r": int(config.target_r),
                               "matrices": len(ranks), "initial": int(config.init_r) * len(ranks),
                               "target": int(config.target_r) * len(ranks), "final": int(sum(ranks.values())),
                               "total_step": int(config.total_step), "tinit": int(config.tinit),
                               "tfinal": int(config.tfinal), "deltaT": int(config.deltaT)}}


def load_adalora(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """`base` with the AdaLoRA adapter saved by save_pretrained (each matrix at its learned rank; eval, frozen)."""
    from peft import PeftModel

    with warnings.catch_warnings():
        # peft first builds every matrix at init_r, reading the saved rank_pattern as LoRA's regex patterns (which
        # match nothing and it warns), then cuts each matrix to its pattern while loading the weights.
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    return _penalty_in_training_only(model).eval()

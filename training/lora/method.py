"""The registry entry of LoRA (peft): attach, save, reload, its study arms and how a run's setting reads."""
from __future__ import annotations

from training.registry import Arm, Method

ADAPTER_FIELDS = ("rank", "alpha", "dropout", "target_modules")


def lora_options(cfg, model, **extra):
    """LoraOptions of a config (rank, α = 2r unless given, dropout, targets resolved, allocation's rank_pattern)."""
    from training.lora.config import LoraOptions
    from training.lora.model import resolve_targets

    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    overrides = dict(r=cfg.rank, alpha=alpha, dropout=cfg.dropout,
                     target_modules=resolve_targets(model, cfg.target_modules))
    if cfg.allocation:
        return LoraOptions.from_allocation(cfg.allocation, **overrides, **extra)
    return LoraOptions(**{k: v for k, v in overrides.items() if v is not None}, **extra)


def attach(cfg, model, ctx):
    from training.lora.model import apply_lora

    return apply_lora(model, lora_options(cfg, model), ctx.peft_task_type)


def save_peft(cfg, model, folder) -> None:
    """A peft adapter folder (safetensors), with the classification head when it trains."""
    model.save_pretrained(folder, safe_serialization=True)


def load_peft(cfg, base, folder):
    from training.lora.model import load_lora

    return load_lora(base, folder)


def check(cfg, hf_config) -> None:
    if cfg.allocation:
        from training.lora.config import LoraOptions

        LoraOptions.from_allocation(cfg.allocation)


def describe_rank(config: dict) -> str:
    """'rank 8', 'rank 42, α 16' (α shown when it is not 2r), or the allocation's text."""
    alloc = config.get("allocation") or {}
    if alloc.get("ranks"):
        return f"{alloc.get('strategy', 'manual')} ranks {'-'.join(str(n) for n in alloc['ranks'])}"
    if alloc.get("rank_pattern"):
        return f"{alloc.get('strategy', 'manual')} rank pattern"
    rank = config.get("rank", 8)
    alpha = config.get("alpha")
    return f"rank {rank}" + ("" if alpha is None or alpha == 2 * rank else f", α {alpha:g}")


METHOD = Method(
    name="lora", label="LoRA", summary="low-rank adapters B·A on the chosen matrices (peft)",
    default_lr=1e-3,      # docs/sweep_default.md: adapters learn at 1e-3, stay at chance at 3e-4, collapse at 3e-3
    artifact_dir="adapter", attach=attach, save=save_peft, load=load_peft,
    takes=(*ADAPTER_FIELDS, "allocation", "allocation_file"), allocation="ranks", check=check,
    describe=describe_rank, step_seconds=0.3,
    arms=(Arm("lora", "LoRA", "lora"),
          Arm("lora_matched", "LoRA (params-matched)", "lora", reference="lora", matched=True)),
)

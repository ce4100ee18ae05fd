"""The registry entry of MiLoRA: one LoRA module per adapted projection, top-k of a block's modules per prompt."""
from __future__ import annotations

from training.registry import Arm, Method


def milora_config(cfg, model, decoder: bool):
    """The MiLoraConfig of a run: rank, α (2r unless given), dropout, targets, top-k per block, balance coefficient."""
    from training.milora.config import MiLoraConfig

    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    heads = [] if decoder else [n for n in ("classifier", "score") if hasattr(model, n)]
    options = dict(r=cfg.rank, lora_alpha=alpha, dropout=cfg.dropout, top_k=cfg.top_k,
                   load_balance_coef=cfg.load_balance_coef, modules_to_save=heads)
    if cfg.target_modules:
        options["target_modules"] = cfg.target_modules
    return MiLoraConfig(**options)


def attach(cfg, model, ctx):
    from training.milora.model import inject_milora

    return inject_milora(model, milora_config(cfg, model, ctx.decoder))


def save(cfg, model, folder) -> None:
    from training.milora.model import save_milora

    save_milora(model, folder)


def load(cfg, base, folder):
    from training.milora.model import load_milora

    return load_milora(base, folder)


def check(cfg, hf_config) -> None:
    """Options checked before a job is queued (rank, top-k, dropout, balance coefficient, targets)."""
    from training.milora.config import MiLoraConfig

    MiLoraConfig(r=cfg.rank, top_k=cfg.top_k, dropout=cfg.dropout, load_balance_coef=cfg.load_balance_coef,
                 **({"target_modules": cfg.target_modules} if cfg.target_modules else {}))


def balance_loss(model):
    from training.milora.model import load_balance_loss

    return load_balance_loss(model)


def describe(config: dict) -> str:
    """'rank 8, top-2 modules per block'."""
    return f"rank {config.get('rank', 8)}, top-{config.get('top_k', 2)} modules per block"


METHOD = Method(
    name="milora", label="MiLoRA (prompt-routed)", unit="module",
    summary="a LoRA per adapted projection; a router per block picks top-k of them once per prompt",
    default_lr=1e-3,      # best validation of {3e-4, 1e-3, 3e-3} (docs/methods_intruders.md)
    artifact_dir="milora", attach=attach, save=save, load=load,
    takes=("rank", "alpha", "dropout", "target_modules", "top_k", "load_balance_coef"),
    weights="moe",        # its layers are single-expert MoE-LoRA layers: merged per module like MoE-LoRA experts
    check=check, extra_loss=balance_loss, describe=describe, step_seconds=0.5,
    loss_note="the router balance term",
    arms=(Arm("milora", "MiLoRA (prompt-routed)", "milora", reference="lora"),),
)

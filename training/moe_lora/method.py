"""The registry entry of MoE-LoRA: routed LoRA experts per block (MoLA / AlphaLoRA allocations), balance loss."""
from __future__ import annotations

from training.registry import Arm, Method


def moe_config(cfg, model, decoder: bool):
    """The MoELoraConfig of a run: its allocation, or `experts` / `top_k` in every block."""
    from training.moe_lora.config import MoELoraConfig

    alpha = cfg.alpha if cfg.alpha is not None else 2.0 * cfg.rank
    heads = [] if decoder else [n for n in ("classifier", "score") if hasattr(model, n)]
    options = dict(r=cfg.rank, lora_alpha=alpha, dropout=cfg.dropout, load_balance_coef=cfg.load_balance_coef,
                   modules_to_save=heads, routing=cfg.routing)
    if cfg.target_modules:
        options["target_modules"] = cfg.target_modules
    if cfg.allocation:
        return MoELoraConfig.from_allocation(cfg.allocation, **options)
    layers = int(model.config.num_hidden_layers)
    return MoELoraConfig(experts_per_layer=[cfg.experts] * layers, top_k=[min(cfg.top_k, cfg.experts)] * layers,
                         **options)


def attach(cfg, model, ctx):
    from training.moe_lora.model import inject_moe_lora

    return inject_moe_lora(model, moe_config(cfg, model, ctx.decoder))


def save(cfg, model, folder) -> None:
    from training.moe_lora.model import save_moe_lora

    save_moe_lora(model, folder)


def load(cfg, base, folder):
    from training.moe_lora.model import load_moe_lora

    return load_moe_lora(base, folder)


def check(cfg, hf_config) -> None:
    from analysis.types import SpectrascopeError
    from training.moe_lora.config import MoELoraConfig

    if cfg.allocation:
        moe = MoELoraConfig.from_allocation(cfg.allocation)
        layers = getattr(hf_config, "num_hidden_layers", None)
        if layers is not None and len(moe.experts_per_layer) != layers:
            raise SpectrascopeError(f"the allocation has {len(moe.experts_per_layer)} layers but the model has "
                                    f"{layers}: make the allocation for this model")


def balance_loss(model):
    from training.moe_lora.model import load_balance_loss

    return load_balance_loss(model)


def describe(config: dict) -> str:
    """'4 experts per layer, top-2', or the allocation: 'alphalora β=2.5: 4-5-6-5-4-6 (30)'."""
    alloc = config.get("allocation") or {}
    experts = alloc.get("experts")
    routing = ", prompt routing" if config.get("routing") == "prompt" else ""
    if not experts:
        return f"{config.get('experts', 4)} experts per layer, top-{config.get('top_k', 2)}{routing}"
    strategy = str(alloc.get("strategy", "manual"))
    if strategy == "alphalora":
        strategy = f"alphalora β={alloc.get('params', {}).get('beta', 2.5):g}"
    return f"{strategy}: {'-'.join(str(n) for n in experts)} ({sum(experts)}){routing}"


METHOD = Method(
    name="moe_lora", label="MoE-LoRA", summary="routed LoRA experts per block; allocations from MoLA or AlphaLoRA",
    default_lr=1e-3, artifact_dir="moe_lora", attach=attach, save=save, load=load,
    takes=("rank", "alpha", "dropout", "target_modules", "experts", "top_k", "load_balance_coef", "routing",
           "allocation", "allocation_file"),
    allocation="experts", weights="moe", check=check, extra_loss=balance_loss, describe=describe,
    loss_note="the load-balancing term (load_balance_coef · Σ over blocks)",
    step_seconds=0.45,
    arms=(Arm("moe_uniform", "MoE-LoRA uniform", "moe_lora", allocation="uniform", reference="lora"),
          Arm("moe_mola", "MoE-LoRA MoLA", "moe_lora", allocation="mola", reference="moe_uniform"),
          Arm("moe_alphalora", "MoE-LoRA AlphaLoRA", "moe_lora", allocation="alphalora", reference="moe_uniform")),
)

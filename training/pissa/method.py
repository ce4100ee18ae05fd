"""The registry entry of PiSSA: LoRA from the principal singular triplets, saved as a rank-2r LoRA on the base."""
from __future__ import annotations

from training.lora.method import ADAPTER_FIELDS, check, describe_rank, load_peft
from training.pissa.config import PissaOptions
from training.registry import Arm, Method


def attach(cfg, model, ctx):
    from training.lora.method import lora_options
    from training.pissa.model import apply_pissa

    return apply_pissa(model, lora_options(cfg, model), cfg.options, ctx.peft_task_type, ctx.device)


def save(cfg, model, folder) -> None:
    from training.pissa.model import save_converted

    save_converted(model, folder)


def describe(config: dict) -> str:
    """'rank 8' (exact SVD) or 'rank 8, randomised SVD (4 iterations)'."""
    niter = (config.get("method_options") or {}).get("niter")
    return describe_rank(config) + (f", randomised SVD ({niter} iterations)" if niter else "")


METHOD = Method(
    name="pissa", label="PiSSA",
    summary="LoRA initialised from each matrix's top-r singular triplets, the rest frozen as the residual (peft)",
    default_lr=3e-4,      # best validation of {1e-4, 3e-4, 1e-3} (docs/methods_intruders.md): at the same lr its
                          # weights move ~3× as far per step as LoRA's (benchmarks/methods_step_size.py)
    artifact_dir="adapter", attach=attach, save=save, load=load_peft,
    takes=(*ADAPTER_FIELDS, "allocation", "allocation_file"), options=PissaOptions, allocation="ranks",
    check=check, describe=describe, step_seconds=0.45,
    arms=(Arm("pissa", "PiSSA", "pissa", reference="lora"),),
)

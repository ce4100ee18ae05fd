"""The registry entry of DoRA (peft use_dora): its merged weight is not W + B·A, so the spectra views merge the run."""
from __future__ import annotations

from training.lora.method import ADAPTER_FIELDS, check, describe_rank, load_peft, save_peft
from training.registry import Arm, Method


def attach(cfg, model, ctx):
    from training.dora.model import apply_dora
    from training.lora.method import lora_options

    return apply_dora(model, lora_options(cfg, model), ctx.peft_task_type)


METHOD = Method(
    name="dora", label="DoRA",
    summary="weight-decomposed LoRA: a trained magnitude per row times the LoRA-updated direction (peft)",
    default_lr=1e-3,      # best validation of {3e-4, 1e-3, 3e-3} (docs/methods_intruders.md)
    artifact_dir="adapter", attach=attach, save=save_peft, load=load_peft,
    takes=(*ADAPTER_FIELDS, "allocation", "allocation_file"), allocation="ranks", check=check,
    weights="merged", describe=describe_rank, step_seconds=0.6,
    arms=(Arm("dora", "DoRA", "dora", reference="lora"),),
)

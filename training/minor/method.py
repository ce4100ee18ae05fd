"""The registry entry of minor-component LoRA (MiLoRA init): saved as a rank-2r LoRA on the original base."""
from __future__ import annotations

from training.lora.method import ADAPTER_FIELDS, check, describe_rank, load_peft
from training.registry import Arm, Method


def attach(cfg, model, ctx):
    from training.lora.method import lora_options
    from training.minor.model import apply_minor

    return apply_minor(model, lora_options(cfg, model), ctx.peft_task_type, ctx.device)


def save(cfg, model, folder) -> None:
    # peft's conversion (path_initial_model_for_weight_conversion) accepts this adapter: its config says
    # init_lora_weights=True and ΔW = s·(B·A − B0·A0) holds for any initial A0, B0, so PiSSA's save serves.
    from training.pissa.model import save_converted

    save_converted(model, folder)


METHOD = Method(
    name="minor", label="Minor-component LoRA",
    summary=("LoRA initialised from each matrix's r smallest singular triplets, the principal part frozen "
             "(Wang et al. 2024, who call it MiLoRA; not the prompt-routed MiLoRA)"),
    default_lr=1e-3,      # best validation of {3e-4, 1e-3, 3e-3} (docs/methods_intruders.md)
    artifact_dir="adapter", attach=attach, save=save, load=load_peft,
    takes=(*ADAPTER_FIELDS, "allocation", "allocation_file"), allocation="ranks", check=check,
    describe=describe_rank, step_seconds=0.45,
    arms=(Arm("minor", "Minor-component LoRA", "minor", reference="lora"),),
)

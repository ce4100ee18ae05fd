"""The registry entry of CorDA (peft): adapters from a calibration pass over the task's training rows, saved as a
rank-2r LoRA on the original base."""
from __future__ import annotations

from training.corda.config import CordaOptions
from training.lora.method import ADAPTER_FIELDS, check, describe_rank, load_peft
from training.registry import Arm, Method


def attach(cfg, model, ctx):
    from training.corda.model import apply_corda, calibration_batches
    from training.lora.method import lora_options

    options = cfg.options
    batches = calibration_batches(ctx, cfg, options.calibration_rows)
    return apply_corda(model, lora_options(cfg, model), options, ctx.peft_task_type, batches, ctx.device)


def save(cfg, model, folder) -> None:
    from training.pissa.model import save_converted

    save_converted(model, folder)          # peft's conversion supports CorDA (ΔW = s·(B·A − B0·A0))


def report(model) -> dict:
    from training.corda.model import calibration_report

    return calibration_report(model)


def describe(config: dict) -> str:
    """'rank 8, ipm, 256 calibration rows'."""
    options = {**vars(CordaOptions()), **(config.get("method_options") or {})}
    return f"{describe_rank(config)}, {options['corda_method']}, {options['calibration_rows']} calibration rows"


METHOD = Method(
    name="corda", label="CorDA",
    summary="LoRA from the SVD of each weight times its input covariance on the task's training rows (peft)",
    default_lr=3e-4,      # best validation of {1e-4, 3e-4, 1e-3} (docs/methods_intruders.md)
    artifact_dir="adapter", attach=attach, save=save, load=load_peft,
    takes=(*ADAPTER_FIELDS, "allocation", "allocation_file"), options=CordaOptions, allocation="ranks",
    check=check, report=report, describe=describe, step_seconds=0.45, needs_task_data=True,
    arms=(Arm("corda", "CorDA", "corda", reference="lora"),),
)

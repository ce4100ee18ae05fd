"""CorDA through peft: a calibration pass over the task's training rows builds each adapted layer's input
covariance C, the SVD of W·C picks the adapter's directions (peft's preprocess_corda + init_lora_weights="corda")."""
from __future__ import annotations

import torch
from torch import nn

from analysis.types import SpectrascopeError
from training.pissa.model import peft_lora_config, record_initial

CALIBRATED = "spectrascope_calibration_rows"     # attribute of the peft model: rows the covariances were built on


def calibration_batches(ctx, cfg, n: int) -> list[dict[str, torch.Tensor]]:
    """Up to `n` of the run's training rows (a seeded subset, in order), encoded as the run encodes them, one row
    per batch without padding: peft's covariance hook reads one sequence per call."""
    from training import data
    from training.scoring import encode
    from training.trainer import subset

    rows = subset(list((ctx.rows or {}).get("train") or []), n)
    if not rows or ctx.task is None or ctx.tokenizer is None:
        raise SpectrascopeError("CorDA builds its adapters from a calibration pass over the task's training rows, "
                                "and none were given: attach it through the trainer (training rows, task, tokenizer)")
    encoded = encode(ctx.task, rows, ctx.tokenizer, cfg, ctx.decoder)
    encoded.pop("labels", None)
    return data.batches(encoded, 1, shuffle=False)


def apply_corda(model: nn.Module, lora_options, corda_options, task_type: str, batches: list[dict],
                device=None) -> nn.Module:
    """`model` as a peft model with CorDA adapters: `batches` run through the model (eval mode, no gradients) to
    build the covariances, then peft decomposes W·C per layer and leaves the residual in the base weights."""
    from peft import get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    if device is not None:
        model = model.to(device)                 # the calibration pass and the SVDs run where the run trains
    where = next(model.parameters()).device
    config = peft_lora_config(lora_options, task_type, model.config.model_type, init_lora_weights="corda",
                              corda_config=CordaConfig(corda_method=corda_options.corda_method))

    def run_model() -> None:
        for batch in batches:
            model(**{k: v.to(where) for k, v in batch.items()})

    preprocess_corda(model, config, run_model=run_model)
    peft_model = record_initial(get_peft_model(model, config))
    setattr(peft_model, CALIBRATED, len(batches))
    return peft_model


def calibration_report(model: nn.Module) -> dict:
    """The run result's record of the calibration pass."""
    n = getattr(model, CALIBRATED, None)
    return {} if n is None else {"calibration_rows": int(n)}

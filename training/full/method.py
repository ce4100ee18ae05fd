"""The registry entry of full fine-tuning: every weight trains and the whole model is saved."""
from __future__ import annotations

from training.registry import Arm, Method


def attach(cfg, model, ctx):
    from training.full.model import prepare_full

    return prepare_full(model)


def save(cfg, model, folder) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def load(cfg, base, folder):
    return base            # the trainer builds the model from the saved folder itself (weights == "model")


METHOD = Method(
    name="full", label="Full fine-tune", summary="every weight trains; the whole model is saved",
    default_lr=1e-4,      # docs/sweep_default.md: best of {3e-5, 1e-4} on the default model
    artifact_dir="model", attach=attach, save=save, load=load, weights="model",
    describe=lambda config: "all weights", step_seconds=0.32,
    arms=(Arm("full", "Full fine-tune", "full", reference="lora"),),
)

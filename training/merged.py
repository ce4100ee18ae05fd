"""Runs whose tuned matrices are no plain LoRA adapter (Method.weights "merged": DoRA, AdaLoRA) as a ModelSource."""
from __future__ import annotations

from pathlib import Path


def merged_model(run_folder: str | Path):
    """The run's model on the CPU with its adapter merged into the base weights (peft merge_and_unload)."""
    from training.trainer import load_artifacts

    model = load_artifacts(run_folder, device="cpu")[0]
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def merged_source(run_folder: str | Path):
    """analysis.sources ModelSource of the run's merged model (an in-memory nn.Module: never cached on disk),
    labelled by the run folder's name."""
    from analysis.sources import open_source

    source = open_source(merged_model(run_folder))
    source.label = f"{Path(run_folder).name} (merged)"
    return source

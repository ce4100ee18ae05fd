"""lm-eval `custom_dataset` loaders for the shipped task YAMLs: Spectrascope's packaged task files, read offline."""
from __future__ import annotations

import sys
from pathlib import Path

try:                                   # run by `python -m training` (or lm_eval from the repository root)
    from training.tasks import load_task
except ImportError:                    # lm_eval run from elsewhere with --include_path: the repository is two up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from training.tasks import load_task


def spectrascope_dataset(name: str):
    """A datasets.DatasetDict (train / validation / test) of a built-in task's normalised rows: the same split
    the trainer and `evaluate` use ({text, label} for classification, {text} for lm)."""
    import datasets

    splits = load_task(name).load_all()
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in splits.items()})


def rotten_tomatoes(**_metadata):
    """training/tasks/rotten_tomatoes.yaml's rows (assets/data/rotten_tomatoes.jsonl.gz)."""
    return spectrascope_dataset("rotten_tomatoes")


def trec(**_metadata):
    """training/tasks/trec.yaml's rows (assets/data/trec.jsonl.gz)."""
    return spectrascope_dataset("trec")


def hamlet(**_metadata):
    """training/tasks/hamlet_lm.yaml's passages (assets/data/hamlet.jsonl.gz)."""
    return spectrascope_dataset("hamlet_lm")

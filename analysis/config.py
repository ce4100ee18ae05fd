"""Project-wide settings: the data directory and the built-in model names."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct"


def data_dir() -> Path:
    """The data directory (caches, runs, database): $SPECTRASCOPE_DATA or ./spectrascope-data."""
    path = Path(os.environ.get("SPECTRASCOPE_DATA", "spectrascope-data")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path

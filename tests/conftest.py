"""Test-session settings: no hub access, and a private data directory per test session."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# MLflow tracking costs ~2.5 s per job (import, store): off for the suite; tests/training/test_tracking.py and
# test_resume.py turn it on for themselves and read the real store back.
os.environ.setdefault("SPECTRASCOPE_MLFLOW", "0")


@pytest.fixture(scope="session", autouse=True)
def _session_data_dir(tmp_path_factory):
    """SPECTRASCOPE_DATA points at a fresh folder for the session, so tests never touch ./spectrascope-data."""
    path = tmp_path_factory.mktemp("spectrascope-data")
    old = os.environ.get("SPECTRASCOPE_DATA")
    os.environ["SPECTRASCOPE_DATA"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPECTRASCOPE_DATA", None)
    else:
        os.environ["SPECTRASCOPE_DATA"] = old


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT built from a config (BERT's default dropout), with MiniLM's tokenizer: a job costs
    little more than start-up. One per session: tests only read it."""
    from tests.tiny_models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert"))

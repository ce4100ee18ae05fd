"""Fixtures for the Streamlit page tests: an AppTest factory and tiny local checkpoints built from a config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture
def app():
    """A fresh AppTest of the whole app (navigation + sidebar), generous timeout for model loading."""
    def make(**query) -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=120)
        for k, v in query.items():
            at.query_params[k] = str(v)
        return at
    return make


def _tiny_llama(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llamas(tmp_path_factory) -> tuple[str, str]:
    """Two 3-layer LLaMA checkpoints (different seeds) in local folders."""
    base = tmp_path_factory.mktemp("tiny-llamas")
    return _tiny_llama(base / "a", 0), _tiny_llama(base / "b", 1)

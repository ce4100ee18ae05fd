"""Tests for the layer-index and module-kind rules on real checkpoint tensor names."""
import pytest

from analysis.naming import is_conv1d_name, layer_index, module_kind

CASES = [
    # BERT / MiniLM
    ("encoder.layer.3.attention.self.query.weight", 3, "q"),
    ("bert.encoder.layer.11.attention.self.key.weight", 11, "k"),
    ("encoder.layer.0.attention.self.value.weight", 0, "v"),
    ("encoder.layer.5.attention.output.dense.weight", 5, "o"),
    ("encoder.layer.5.intermediate.dense.weight", 5, "fc_in"),
    ("encoder.layer.5.output.dense.weight", 5, "fc_out"),
    ("embeddings.word_embeddings.weight", None, "embedding"),
    ("embeddings.position_embeddings.weight", None, "embedding"),
    ("bert.embeddings.token_type_embeddings.weight", None, "embedding"),
    ("pooler.dense.weight", None, "other"),
    ("classifier.weight", None, "head"),
    ("cls.predictions.transform.dense.weight", None, "head"),
    # GPT-2
    ("transformer.h.7.attn.c_attn.weight", 7, "other"),
    ("transformer.h.7.attn.c_proj.weight", 7, "o"),
    ("h.0.mlp.c_fc.weight", 0, "fc_in"),
    ("transformer.h.10.mlp.c_proj.weight", 10, "fc_out"),
    ("transformer.wte.weight", None, "embedding"),
    ("transformer.wpe.weight", None, "embedding"),
    ("lm_head.weight", None, "head"),
    # LLaMA / Mistral / Qwen
    ("model.layers.29.self_attn.q_proj.weight", 29, "q"),
    ("model.layers.0.self_attn.k_proj.weight", 0, "k"),
    ("model.layers.0.self_attn.v_proj.weight", 0, "v"),
    ("model.layers.0.self_attn.o_proj.weight", 0, "o"),
    ("model.layers.2.mlp.gate_proj.weight", 2, "gate"),
    ("model.layers.2.mlp.up_proj.weight", 2, "up"),
    ("model.layers.2.mlp.down_proj.weight", 2, "down"),
    ("model.embed_tokens.weight", None, "embedding"),
    ("layers.4.self_attn.q_proj.weight", 4, "q"),
    # Mixtral experts, OPT, GPT-NeoX, Phi, T5, DistilBERT, generic
    ("model.layers.3.block_sparse_moe.experts.5.w1.weight", 3, "gate"),
    ("model.layers.3.block_sparse_moe.experts.5.w3.weight", 3, "up"),
    ("model.layers.3.block_sparse_moe.experts.5.w2.weight", 3, "down"),
    ("model.decoder.layers.1.self_attn.out_proj.weight", 1, "o"),
    ("model.decoder.layers.1.fc1.weight", 1, "fc_in"),
    ("model.decoder.layers.1.fc2.weight", 1, "fc_out"),
    ("gpt_neox.layers.2.attention.query_key_value.weight", 2, "other"),
    ("gpt_neox.layers.2.attention.dense.weight", 2, "o"),
    ("gpt_neox.layers.2.mlp.dense_h_to_4h.weight", 2, "fc_in"),
    ("gpt_neox.layers.2.mlp.dense_4h_to_h.weight", 2, "fc_out"),
    ("model.layers.1.self_attn.dense.weight", 1, "o"),
    ("encoder.block.3.layer.0.SelfAttention.q.weight", 3, "q"),
    ("encoder.block.3.layer.0.SelfAttention.o.weight", 3, "o"),
    ("encoder.block.3.layer.1.DenseReluDense.wi.weight", 3, "fc_in"),
    ("encoder.block.3.layer.1.DenseReluDense.wo.weight", 3, "fc_out"),
    ("shared.weight", None, "embedding"),
    ("distilbert.transformer.layer.2.attention.q_lin.weight", 2, "q"),
    ("distilbert.transformer.layer.2.attention.out_lin.weight", 2, "o"),
    ("distilbert.transformer.layer.2.ffn.lin1.weight", 2, "fc_in"),
    ("blocks.6.mlp.fc1.weight", 6, "fc_in"),
    ("backbone.stages.2.proj.weight", 2, "other"),
    ("0.weight", 0, "other"),
    ("proj.weight", None, "other"),
]


@pytest.mark.parametrize("name,layer,kind", CASES)
def test_layer_and_kind(name, layer, kind):
    assert layer_index(name) == layer
    assert module_kind(name) == kind


def test_conv1d_names():
    assert is_conv1d_name("transformer.h.0.attn.c_attn.weight")
    assert is_conv1d_name("transformer.h.0.mlp.c_proj.weight")
    assert not is_conv1d_name("transformer.h.0.attn.c_attn.bias")
    assert not is_conv1d_name("model.layers.0.self_attn.q_proj.weight")

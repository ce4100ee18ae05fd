"""Pure naming rules: the transformer block index and the module kind of a checkpoint tensor name."""
from __future__ import annotations

import re

MODULE_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "fc_in", "fc_out", "embedding", "head", "other")

# Containers whose next numeric segment is the block index: BERT `encoder.layer.N`, GPT-2 `h.N`,
# LLaMA/Mistral/Qwen `layers.N`, T5 `block.N`, others `blocks.N`, CLIP `resblocks.N`.
_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|resblocks)\.(\d+)(?:\.|$)")
_ANY_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")

# (pattern searched in the module path, i.e. the name without ".weight"; kind). First match wins, so
# the more specific rules come first ("attention.output.dense" before "output.dense").
_RULES: list[tuple[str, str]] = [
    # embeddings and heads
    (r"(^|\.)(word_embeddings|position_embeddings|token_type_embeddings|embed_tokens|embed_positions"
     r"|tok_embeddings|wte|wpe|shared|embeddings?)$", "embedding"),
    (r"(^|\.)(lm_head|embed_out|classifier|score|qa_outputs)$", "head"),
    (r"^output$", "head"),                      # Meta LLaMA layout: top-level "output.weight"
    (r"(^|\.)cls\.predictions(\.|$)", "head"),  # BERT masked-LM head
    # attention
    (r"(^|\.)(q_proj|query|q|wq|q_lin|query_proj)$", "q"),
    (r"(^|\.)(k_proj|key|k|wk|k_lin|key_proj)$", "k"),
    (r"(^|\.)(v_proj|value|v|wv|v_lin|value_proj)$", "v"),
    (r"(^|\.)attention\.output\.dense$", "o"),  # BERT
    (r"(^|\.)(attn|attention|self_attn)\.(c_proj|dense|out_proj)$", "o"),  # GPT-2, GPT-NeoX, Phi
    (r"(^|\.)(o_proj|out_proj|out_lin)$", "o"),
    (r"(^|\.)(self_attention|selfattention|encdecattention)\.o$", "o"),  # T5 "SelfAttention.o"
    (r"(^|\.)(attention|attn)\.wo$", "o"),        # Meta LLaMA layout
    # gated MLP (LLaMA names, Mixtral w1/w3/w2, T5 wi_0/wi_1)
    (r"(^|\.)(gate_proj|w1|wi_0)$", "gate"),
    (r"(^|\.)(up_proj|w3|wi_1)$", "up"),
    (r"(^|\.)(down_proj|w2)$", "down"),
    # plain MLP
    (r"(^|\.)intermediate\.dense$", "fc_in"),   # BERT
    (r"(^|\.)output\.dense$", "fc_out"),        # BERT (attention.output.dense matched above)
    (r"(^|\.)(c_fc|fc1|fc_in|dense_h_to_4h|lin1|wi)$", "fc_in"),
    (r"(^|\.)mlp\.c_proj$", "fc_out"),          # GPT-2
    (r"(^|\.)(fc2|fc_out|dense_4h_to_h|lin2|wo)$", "fc_out"),
]
_COMPILED = [(re.compile(pattern), kind) for pattern, kind in _RULES]

# GPT-2 style Conv1D layers store their weight as (in, out).
_CONV1D_LEAVES = {"c_attn", "c_proj", "c_fc", "q_attn"}


def module_path(name: str) -> str:
    """The module part of a parameter name: "a.b.weight" -> "a.b"."""
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def layer_index(name: str) -> int | None:
    """Transformer block index of a tensor name, or None for embeddings, heads and unnumbered tensors.

    The first numeric segment after a known block container wins (so T5's `block.3.layer.1` is 3);
    otherwise the first numeric segment anywhere (e.g. `transformer.resid.7.proj`, `0.weight` in a Sequential).
    """
    if module_kind(name) in ("embedding", "head"):
        return None
    match = _BLOCK.search(name)
    if match is None:
        match = _ANY_INDEX.search(module_path(name))
    return int(match.group(1)) if match else None


def module_kind(name: str) -> str:
    """Module kind of a tensor name: one of MODULE_KINDS.

    GPT-2's fused `c_attn` (q, k and v in one matrix) is "other"; a pooler is "other".
    """
    path = module_path(name).lower()
    for pattern, kind in _COMPILED:
        if pattern.search(path):
            return kind
    return "other"


def is_conv1d_name(name: str) -> bool:
    """True for GPT-2 Conv1D weight names (c_attn, c_proj, c_fc, q_attn), stored as (in, out)."""
    return name.endswith(".weight") and module_path(name).rsplit(".", 1)[-1] in _CONV1D_LEAVES

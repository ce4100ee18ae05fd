"""Inject MoE-LoRA layers into a transformer, collect the balance loss, save / load, and merged views for analysis."""
from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from analysis.types import SpectrascopeError

from .config import ALL_LINEAR, MODULE_KINDS, MoELoraConfig
from .layer import MaskState, MoELoraLinear, base_weight
from .prompt import cache_is_empty

# Block index in a module name: BERT "encoder.layer.N.", GPT-2 "h.N.", LLaMA "layers.N.", others "blocks.N.".
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks)\.(\d+)\.")
WEIGHTS_NAME = "moe_lora.safetensors"
CONFIG_NAME = "moe_lora_config.json"


# -- finding and wrapping ---------------------------------------------------------------------------------

def block_index(name: str) -> tuple[int, str] | None:
    """(block index, local name inside the block) of a module name, or None outside the numbered blocks."""
    m = LAYER_PATTERN.search(name)
    return (int(m.group(1)), name[m.end():]) if m else None


def is_target(name: str, local: str, targets: list[str]) -> bool:
    """Whether a module (full name, local name in its block) is named by the config's target_modules."""
    for t in targets:
        if t == ALL_LINEAR:
            return True
        if t in MODULE_KINDS:
            if local in MODULE_KINDS[t]:
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def find_targets(model: nn.Module, config: MoELoraConfig) -> list[tuple[str, int]]:
    """(module name, block index) of every Linear / Conv1D the config adapts, in model order."""
    found, n_blocks = [], 0
    for name, module in model.named_modules():
        where = block_index(name)
        if where is None or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        n_blocks = max(n_blocks, where[0] + 1)
        if is_target(name, where[1], config.target_modules):
            found.append((name, where[0]))
    if n_blocks == 0:
        raise SpectrascopeError("no numbered transformer blocks found (expected module names like "
                                "'encoder.layer.N', 'h.N' or 'layers.N'): this model is not supported.")
    if n_blocks != len(config.experts_per_layer):
        raise SpectrascopeError(f"the model has {n_blocks} blocks but the allocation lists "
                                f"{len(config.experts_per_layer)}: allocate experts for this model's depth.")
    if not found:
        raise SpectrascopeError(f"no linear layer matches target_modules {config.target_modules}: use kinds "
                                f"{sorted(MODULE_KINDS)}, name suffixes such as 'query', or '{ALL_LINEAR}'.")
    return found


def moe_lora_layers(model: nn.Module) -> Iterator[tuple[str, MoELoraLinear]]:
    """(module name, layer) of every MoE-LoRA layer in the model."""
    for name, module in model.named_modules():
        if isinstance(module, MoELoraLinear):
            yield name, module


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _saved_modules(model: nn.Module, config: MoELoraConfig) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in model.named_modules():
        if any(name == s or name.endswith("." + s) for s in config.modules_to_save):
            if not any(name.startswith(o + ".") for o, _ in out):   # skip children of a module already taken
                out.append((name, module))
    return out


def inject_moe_lora(model: nn.Module, config: MoELoraConfig) -> nn.Module:
    """Wrap the targeted linears of block l with N_l experts and top-k_l (N_l = 0: untouched), in place.

    All base weights are frozen; routers, experts and `config.modules_to_save` train. A forward pre-hook on
    `model` hands the call's `attention_mask` (keyword or positional) to every router so that the balance
    loss ignores padding; `routing_mask(model, mask)` sets it explicitly when the model is called otherwise.
    Returns the same model, with `model.moe_lora_config` set.
    """
    if any(True for _ in moe_lora_layers(model)):
        raise SpectrascopeError("this model already has MoE-LoRA layers: inject into a freshly loaded model.")
    targets = find_targets(model, config)
    missing = [s for s in config.modules_to_save
               if not any(n == s or n.endswith("." + s) for n, _ in model.named_modules())]
    if missing:
        raise SpectrascopeError(f"modules_to_save {missing} not found in the model (e.g. 'classifier' for BERT, "
                                "'score' for LLaMA / GPT-2 sequence classification).")
    model.requires_grad_(False)
    state = MaskState()
    track = config.load_balance_coef > 0
    for name, layer in targets:
        n, k = config.experts_per_layer[layer], config.top_k[layer]
        if n == 0:
            continue
        base = model.get_submodule(name)
        wrapped = MoELoraLinear(base, n, k, config.r, config.lora_alpha, config.dropout, track_balance=track,
                                routing=config.routing)
        wrapped.train(base.training)                 # an eval-mode model stays in eval mode (no dropout)
        wrapped.mask_state = state
        wrapped.block = layer
        _set_submodule(model, name, wrapped)
    for _, module in _saved_modules(model, config):
        module.requires_grad_(True)
    model.moe_lora_config = config
    model._moe_lora_mask_state = state
    model._moe_lora_hooks = _register_mask_hooks(model)
    return model


def _register_mask_hooks(model: nn.Module, attr: str = "_moe_lora_mask_state") -> list:
    """Pre-hook: take the call's attention_mask into the mask state `model.<attr>`, and for prompt routing whether
    the call starts sequences (no KV cache, or an empty one: prompt.cache_is_empty) and a causal LM's labels;
    post-hook: clear them (no stale masks; outside a call every call is a new sequence).

    The hooks reach the state through the module they run on, so a deepcopy of the model keeps working.
    """
    params = list(inspect.signature(model.forward).parameters)
    pos = {n: params.index(n) if n in params else None
           for n in ("attention_mask", "labels", "cache", "past_key_values")}
    try:
        causal = bool(model.can_generate())          # labels (B, S) mark the answer only in a causal LM
    except (AttributeError, TypeError):
        causal = False

    def arg(name, args, kwargs):
        if name in kwargs:
            return kwargs[name]
        i = pos[name]
        return args[i] if i is not None and len(args) > i else None

    def before(module, args, kwargs):
        state = getattr(module, attr)
        mask = arg("attention_mask", args, kwargs)
        state.auto = mask if isinstance(mask, torch.Tensor) else None
        labels = arg("labels", args, kwargs) if causal else None
        state.labels = labels if isinstance(labels, torch.Tensor) else None
        cache = arg("cache", args, kwargs)
        state.fresh = cache_is_empty(cache if cache is not None else arg("past_key_values", args, kwargs))

    def after(module, _args, _kwargs, _output):
        state = getattr(module, attr)
        state.auto, state.labels, state.fresh = None, None, True

    return [model.register_forward_pre_hook(before, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True)]


def unload_moe_lora(model: nn.Module) -> nn.Module:
    """Put the base layers back (adapters dropped, nothing merged) and remove the hooks; base stays frozen."""
    for name, layer in list(moe_lora_layers(model)):
        _set_submodule(model, name, layer.base_layer)
    for handle in getattr(model, "_moe_lora_hooks", []):
        handle.remove()
    for attr in ("moe_lora_config", "_moe_lora_mask_state", "_moe_lora_hooks"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


@contextlib.contextmanager
def routing_mask(model: nn.Module, attention_mask: torch.Tensor | None):
    """Within the block, routers of `model` (a model or a single MoELoraLinear) treat mask == 0 as padding."""
    states = {id(layer.mask_state): layer.mask_state for _, layer in moe_lora_layers(model)}
    old = {key: s.pinned for key, s in states.items()}
    for s in states.values():
        s.pinned = attention_mask
    try:
        yield
    finally:
        for key, s in states.items():
            s.pinned = old[key]


# -- losses and counts ------------------------------------------------------------------------------------

def load_balance_loss(model: nn.Module, coef: float | None = None) -> torch.Tensor:
    """coef * Σ_l L_l: one Switch-style term per transformer block (MoLA), from the last forward.

    L_l = N_l · Σ_e f_e · P_e, pooled over the routers of ALL the block's adapted matrices: f_e is the share of
    the block's k·T selections that went to expert index e, P_e the mean router probability of e over those
    rows. Padding is excluded (the experts see real tokens only). One term per block, not one per adapted matrix
    summed, which would weigh the loss by the number of adapted matrices (6 on BERT, 7 on LLaMA). A layer used
    on its own (no block) is its own group. `coef` defaults to config.load_balance_coef (0.001 as in MoLA's
    formula; the published MoLA / AlphaLoRA scripts train with it off, coef 0); 0 (or no routers) gives 0.
    """
    if coef is None:
        config = getattr(model, "moe_lora_config", None)
        coef = config.load_balance_coef if config is not None else 1.0
    groups: dict = {}
    for name, layer in moe_lora_layers(model):
        if layer.route_stats is not None:
            groups.setdefault(name if layer.block is None else layer.block, []).append(layer)
    if coef == 0 or not groups:
        p = next(model.parameters())
        return torch.zeros((), device=p.device)
    terms = []
    for layers in groups.values():
        picks = torch.stack([layer.route_stats[0] for layer in layers]).sum(0)      # (N,) selections
        probs = torch.stack([layer.route_stats[1] for layer in layers]).sum(0)      # (N,) summed p
        tokens = sum(layer.route_stats[2] for layer in layers)
        if tokens == 0:
            terms.append(probs.sum() * 0.0)                                         # nothing to balance
            continue
        n, k = layers[0].n_experts, layers[0].top_k
        terms.append(n * (picks / (k * tokens)) @ (probs / tokens))
    return coef * torch.stack(terms).sum()


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), as peft's get_nb_trainable_parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def print_trainable_parameters(model: nn.Module) -> None:
    """Print 'trainable params: X || all params: Y || trainable%: Z', as peft does."""
    trainable, total = trainable_parameter_count(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


# -- save / load ------------------------------------------------------------------------------------------

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Router and expert weights (plus modules_to_save), keyed as in model.state_dict()."""
    config: MoELoraConfig = model.moe_lora_config
    out = {}
    for name, layer in moe_lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A
        out[f"{name}.lora_B"] = layer.lora_B
        if layer.router is not None:
            out[f"{name}.router.weight"] = layer.router.weight
    for name, module in _saved_modules(model, config):
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_moe_lora(model: nn.Module, directory: str | Path) -> Path:
    """Write moe_lora.safetensors (routers, experts, modules_to_save) and moe_lora_config.json to `directory`."""
    if not hasattr(model, "moe_lora_config"):
        raise SpectrascopeError("this model has no MoE-LoRA adapter to save: call inject_moe_lora first.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    model.moe_lora_config.to_json(directory / CONFIG_NAME)
    return directory


def load_moe_lora(model: nn.Module, directory: str | Path) -> nn.Module:
    """Inject the saved config into a fresh `model` (or reuse its matching adapter) and load the weights."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise SpectrascopeError(f"{directory} is not a MoE-LoRA adapter folder: it needs {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (written by save_moe_lora).")
    config = MoELoraConfig.from_json(directory / CONFIG_NAME)
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError) as err:
        raise SpectrascopeError(f"could not read {directory / WEIGHTS_NAME} ({err}).") from None
    if hasattr(model, "moe_lora_config"):
        if model.moe_lora_config.to_dict() != config.to_dict():
            raise SpectrascopeError("the model already has a different MoE-LoRA adapter: load into a fresh model.")
    else:
        inject_moe_lora(model, config)
        try:
            _load_tensors(model, tensors, directory)
        except SpectrascopeError:
            unload_moe_lora(model)                  # leave the model as it came
            raise
        return model
    _load_tensors(model, tensors, directory)
    return model


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SpectrascopeError(f"the adapter in {directory} does not fit this model (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}): load it into the model class it was trained on.")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise SpectrascopeError(f"{key} has shape {tuple(value.shape)} in {directory} but "
                                    f"{tuple(expected[key].shape)} in the model: wrong base model?")
    model.load_state_dict(tensors, strict=False)


# -- analysis views ---------------------------------------------------------------------------------------

@torch.no_grad()
def merged_expert_weights(model: nn.Module, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ("<module>.experts.<e>", W0 + s B_e A_e) per expert, each (d_out, d_in) float32 CPU, one at a time.

    `names` restricts to some adapted module names. W0 is in (out, in) orientation (GPT-2 Conv1D transposed).
    """
    wanted = set(names) if names is not None else None
    for name, layer in moe_lora_layers(model):
        if wanted is not None and name not in wanted:
            continue
        w0 = base_weight(layer.base_layer).float()                         # (d_out, d_in)
        deltas = layer.expert_deltas()                                     # (N, d_out, d_in)
        for e in range(layer.n_experts):
            yield f"{name}.experts.{e}", (w0 + deltas[e]).cpu()


@torch.no_grad()
def routing_weighted_delta(model: nn.Module, inputs: Mapping | Iterable[Mapping] | torch.Tensor
                           ) -> dict[str, torch.Tensor]:
    """Mean over the real tokens of `inputs` of s * sum_e p_hat_e(x) B_e A_e, per adapted module: (d_out, d_in).

    The update is linear in the gate, so this is s * sum_e mean(p_hat_e) B_e A_e. `inputs`: a batch dict
    (e.g. tokenizer output with attention_mask), a list of them, or an input_ids tensor. Add W0 for the
    effective matrix. Runs in eval mode without gradients; the model's training mode is restored.
    """
    if isinstance(inputs, (Mapping, torch.Tensor)):
        inputs = [inputs]
    layers = list(moe_lora_layers(model))
    if not layers:
        raise SpectrascopeError("this model has no MoE-LoRA layers: call inject_moe_lora or load_moe_lora first.")
    was_training = model.training
    device = next(model.parameters()).device
    for _, layer in layers:
        layer.collect_gates, layer.gate_sum, layer.gate_count = True, None, 0
    try:
        model.eval()
        for batch in inputs:
            if isinstance(batch, torch.Tensor):
                model(batch.to(device))
            else:
                model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        out = {}
        for name, layer in layers:
            if not layer.gate_count:
                raise SpectrascopeError("the inputs hold no real tokens: give at least one unpadded token.")
            mean_gate = (layer.gate_sum / layer.gate_count).float()          # (N,)
            out[name] = torch.einsum("e,eoi->oi", mean_gate.to(layer.lora_A.device),
                                     layer.expert_deltas()).cpu()           # (d_out, d_in)
        return out
    finally:
        for _, layer in layers:
            layer.collect_gates, layer.gate_sum, layer.gate_count = False, None, 0
        model.train(was_training)

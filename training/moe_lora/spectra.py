"""MoE-style runs (MoE-LoRA, MiLoRA) as matrices for the intruder analysis: per expert or the routed mean update."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from analysis.types import MatrixInfo, SpectrascopeError

PER_EXPERT, ROUTED = "per expert", "routing-weighted mean update"
MODES = {PER_EXPERT: "each expert merged on its own: W0 + s·B_e A_e (every expert is one matrix)",
         ROUTED: "W0 + s·Σ_e mean gate_e · B_e A_e, the gate averaged over up to 64 validation examples"}
ROUTED_EXAMPLES = 64


def base_matcher(base_src) -> Callable[[str, tuple], MatrixInfo]:
    """module name, W0 shape → the base source's MatrixInfo of that weight (by name suffix and shape), or a new
    MatrixInfo named after the module when the base names it differently."""
    from analysis.naming import layer_index, module_kind

    by_name = {i.name: i for i in base_src.matrices()}

    def info(module: str, shape: tuple) -> MatrixInfo:
        full = module + ".weight"
        hits = [i for n, i in by_name.items() if n == full or full.endswith("." + n)]
        if len(hits) == 1 and (hits[0].rows, hits[0].cols) == tuple(shape):
            return hits[0]
        return MatrixInfo(full, layer_index(full), module_kind(full), *shape)

    return info


def expert_pairs(model, base_src, method_label: str = "MoE-LoRA", unit: str = "expert"
                 ) -> Iterator[tuple[MatrixInfo, MatrixInfo, object, object]]:
    """(info, base info, W0, W0 + s·B_e A_e) per expert of every MoE-style layer, one at a time; `info` names the
    expert (`<base name> [expert 3]`, or `[module 0]` for MiLoRA) and says in its notes what was merged."""
    from training.moe_lora import merged_expert_weights

    match = base_matcher(base_src)
    for name, W in merged_expert_weights(model):
        module, e = name.rsplit(".experts.", 1)
        W0 = _w0(model, module)
        b = match(module, tuple(W0.shape))
        info = MatrixInfo(f"{b.name} [{unit} {e}]", b.layer, b.module, b.rows, b.cols,
                          notes=(f"{method_label} {unit} {e} merged",))
        yield info, b, W0, W


def routed_pairs(model, base_src, batches, method_label: str = "MoE-LoRA"
                 ) -> Iterator[tuple[MatrixInfo, MatrixInfo, object, object]]:
    """(info, base info, W0, W0 + routing-weighted mean update) per adapted module, the gate averaged over
    `batches`."""
    from training.moe_lora import routing_weighted_delta

    match = base_matcher(base_src)
    for module, D in routing_weighted_delta(model, batches).items():
        W0 = _w0(model, module)
        b = match(module, tuple(W0.shape))
        yield dataclasses.replace(b, notes=(f"{method_label} routing-weighted mean update",)), b, W0, W0 + D


def _w0(model, module: str):
    from training.moe_lora.layer import base_weight

    return base_weight(model.get_submodule(module).base_layer).float().cpu()


def intruder_report(run_folder: str | Path, base: str | None, mode: str = PER_EXPERT, top_k: int = 10,
                    progress=None, finetuned_label: str | None = None, epsilon: float | None = None):
    """The IntruderReport of a MoE-style run against its base: per expert, or (ROUTED) for the routing-weighted
    mean update over up to ROUTED_EXAMPLES validation (else training) rows."""
    from analysis import intruders
    from analysis.sources import open_source
    from training import data, registry
    from training.scoring import encode
    from training.trainer import load_artifacts

    if mode not in MODES:
        raise SpectrascopeError(f"unknown MoE view {mode!r}: use {' or '.join(MODES)}")
    base_src = open_source(base)
    model, tokenizer, cfg, task, rows, decoder = load_artifacts(run_folder, device="cpu")
    method = registry.get(cfg.method)
    if mode == PER_EXPERT:
        from training.moe_lora import moe_lora_layers

        total = sum(layer.n_experts for _, layer in moe_lora_layers(model))
        quads = expert_pairs(model, base_src, method.label, method.unit)
    else:
        split = rows.get("validation") or rows.get("train") or []
        if not split:
            raise SpectrascopeError(f"run {Path(run_folder).name} has no validation or training rows to average the "
                                    "routing over: use the per-expert view")
        batches = data.batches(encode(task, split[:ROUTED_EXAMPLES], tokenizer, cfg, decoder), cfg.batch_size,
                               shuffle=False)
        pairs = list(routed_pairs(model, base_src, batches, method.label))
        total, quads = len(pairs), iter(pairs)
    cache = intruders.BaseSvdCache(base_src)
    base_of: dict[str, MatrixInfo] = {}

    def triples():
        for info, b, W0, W in quads:
            base_of[info.name] = b
            yield info, W0, W

    return intruders.compare_matrices(triples(), top_k, intruders.EPSILON if epsilon is None else epsilon, progress,
                                      total=total, base_svd=lambda info, W0: cache(base_of[info.name], W0),
                                      base_label=base_src.label, finetuned_label=finetuned_label or method.label)

"""Generation speed on a causal model: LoRA (peft), MoE-LoRA token / prompt routing and MiLoRA, side by side."""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LogitsProcessor,  # noqa: E402
                          LogitsProcessorList)
from transformers.utils import logging as hf_logging  # noqa: E402

from training import registry  # noqa: E402
from training.trainer import TrainConfig, model_folder  # noqa: E402

# Every variant is built the way a run builds it (registry Method.attach with a TrainConfig), on a copy of the same
# base model, adapting the same matrices (every Linear inside the blocks), rank 8.
VARIANTS = {
    "base (no adapter)": None,
    "LoRA (peft)": {"method": "lora"},
    "MoE-LoRA token": {"method": "moe_lora", "routing": "token"},
    "MoE-LoRA prompt": {"method": "moe_lora", "routing": "prompt"},
    "MiLoRA": {"method": "milora"},
}
REFERENCE = "LoRA (peft)"


def tiny_llama(args) -> torch.nn.Module:
    """A small LLaMA built from a config (random weights): fast on a CPU, the same kind of blocks as SmolLM2."""
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def base_model(args) -> tuple[torch.nn.Module, str]:
    if args.model == "tiny-llama":
        model = tiny_llama(args)
        c = model.config
        return model, f"tiny LLaMA from a config ({c.num_hidden_layers} layers, hidden {c.hidden_size}, random weights)"
    folder = model_folder(args.model)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    c = model.config
    return model, f"{args.model} ({c.num_hidden_layers} layers, hidden {c.hidden_size})"


def build(variant: str, base: torch.nn.Module, args) -> torch.nn.Module:
    """A copy of the base with the variant's adapter attached as training would, LoRA B made non-zero."""
    model = copy.deepcopy(base)
    spec = VARIANTS[variant]
    if spec is not None:
        cfg = TrainConfig.from_dict({**spec, "rank": args.r, "dropout": 0.0, "target_modules": ["all-linear"],
                                     **({"experts": args.experts} if "experts" in registry.get(spec["method"]).takes
                                        else {}),
                                     **({"top_k": args.top_k} if "top_k" in registry.get(spec["method"]).takes
                                        else {})})
        torch.manual_seed(args.seed)
        model = cfg.method_spec.attach(cfg, model, registry.AttachContext(decoder=True))
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(args.device).eval()


def prompts(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


class Clock(LogitsProcessor):
    """Stamps the time each new token's logits arrive (after its forward pass): prefill and per-step decode times
    come out of the same generate() call that is timed."""

    def __init__(self, sync, now) -> None:
        self.sync, self.now, self.stamps = sync, now, []

    def __call__(self, input_ids, scores):
        self.sync()
        self.stamps.append(self.now())
        return scores


def timed_generate(model, ids: torch.Tensor, new: int, now=time.perf_counter) -> tuple[float, float, float]:
    """(seconds, prefill seconds, median decode-step seconds) of greedy generate() of exactly `new` tokens per
    prompt (KV cache on, no early stop). Prefill = from the call to the first token's logits (setup included).
    `now`: the clock, wall (time.perf_counter) or this process's CPU time (time.process_time)."""
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if ids.device.type == "cuda" else (lambda: None)
    clock = Clock(sync, now)
    sync()
    t0 = now()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
    sync()
    seconds = now() - t0
    assert out.shape[1] == ids.shape[1] + new and len(clock.stamps) == new, (out.shape, len(clock.stamps))
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    return seconds, clock.stamps[0] - t0, statistics.median(steps) if steps else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-llama", help="tiny-llama (built from a config) or a causal model: "
                    "SmolLM2-135M, a built-in name or a folder")
    ap.add_argument("--layers", type=int, default=4, help="tiny-llama only")
    ap.add_argument("--hidden", type=int, default=256, help="tiny-llama only")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated; one table each")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--experts", type=int, default=4, help="MoE-LoRA experts per block")
    ap.add_argument("--top-k", type=int, default=2, help="MoE-LoRA experts / MiLoRA modules per block")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats, variants interleaved; median reported")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, with "
                         "--threads 1 it is the compute of one core)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from the default list")
    args = ap.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures CPU work: use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    base, described = base_model(args)
    models = {v: build(v, base, args) for v in variants}
    vocab = base.config.vocab_size
    print(f"model: {described}; device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.machine()} {os.cpu_count()} CPUs")
    print(f"greedy generate(), KV cache on, prompts of {args.prompt_len} random tokens (no padding), "
          f"{args.new_tokens} new tokens each; r {args.r}, all linear layers of every block; MoE-LoRA "
          f"{args.experts} experts top-{args.top_k}; MiLoRA top-{args.top_k} modules per block; "
          f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up; {args.clock} clock")
    print("tokens/s = new tokens of the batch / generate() seconds; prefill = generate() call to the first token's "
          "logits; decode = median seconds between later tokens' logits (both medians over the repeats)")
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = prompts(batch, args.prompt_len, vocab, args.seed).to(args.device)
        runs: dict[str, list] = {v: [] for v in variants}
        for _ in range(args.warmup):
            for v in variants:
                timed_generate(models[v], ids, args.new_tokens, now)
        for _ in range(args.repeats):
            for v in variants:
                runs[v].append(timed_generate(models[v], ids, args.new_tokens, now))
        med = {v: [statistics.median(r[i] for r in runs[v]) for i in range(3)] for v in variants}
        rate = {v: batch * args.new_tokens / med[v][0] for v in variants}
        ref = rate.get(REFERENCE)
        print(f"\nbatch {batch}")
        print(f"| {'variant':<18} | {'tokens/s':>8} | {'vs LoRA':>7} | {'prefill ms':>10} | {'decode ms/step':>14} |")
        print(f"|{'-' * 20}|{'-' * 9}:|{'-' * 8}:|{'-' * 11}:|{'-' * 15}:|")
        for v in variants:
            ratio = f"{rate[v] / ref:.2f}x" if ref else "-"
            print(f"| {v:<18} | {rate[v]:>8.0f} | {ratio:>7} | {1000 * med[v][1]:>10.1f} | {1000 * med[v][2]:>14.2f} |")


if __name__ == "__main__":
    main()

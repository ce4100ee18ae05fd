"""CLI `python -m analysis allocate`: print an expert (and optional rank) allocation as allocation JSON."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from analysis import allocation as al
from analysis.cli_common import guarded
from analysis.types import SpectrascopeError

HELP = "allocate LoRA experts (and optionally ranks) across layers: AlphaLoRA, uniform or a MoLA preset"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `allocate` sub-command on an argparse subparsers object."""
    p = subparsers.add_parser("allocate", help=HELP, description=HELP + ".")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    """Add the allocate arguments to a parser (numbers are parsed in run() so bad values give one clear line)."""
    p.add_argument("model", nargs="?", default=None,
                   help="model name or path; its layer scores come from the analysis engine (default model if "
                        "neither MODEL nor --scores is given)")
    p.add_argument("--scores", help="comma-separated layer scores α_1,...,α_L; allocates without loading a model")
    p.add_argument("--strategy", default="alphalora",
                   help="alphalora (default), uniform, mola:DIGITS (e.g. mola:2468; ignores --budget and reports "
                        "its own total) or manual (with --experts)")
    p.add_argument("--experts", help="comma-separated expert counts per layer for --strategy manual")
    p.add_argument("--budget", help="total experts T (default 5 × layers)")
    p.add_argument("--beta", default=str(al.DEFAULT_BETA), help="AlphaLoRA exponent β (default 2.5; 0 = uniform)")
    p.add_argument("--min", dest="min_experts", default="1",
                   help="minimum experts per layer, a water-filled floor: only layers whose share T·α^β/Σα^β falls "
                        "below it are lifted, the rest keep the paper's rule (default 1; 0 allowed)")
    p.add_argument("--max", dest="max_experts", help="maximum experts per layer (default none)")
    p.add_argument("--rank", default=str(al.DEFAULT_RANK),
                   help="LoRA rank of each expert, for the parameter count (default 8)")
    p.add_argument("--modules", help="adapted module kinds, comma-separated (default all linear: "
                                     + ",".join(al.LINEAR_KINDS) + ")")
    p.add_argument("--rank-budget", help="also allocate per-layer LoRA ranks with Σ r_l = R and export peft "
                                         "rank_pattern/alpha_pattern")
    p.add_argument("--min-rank", default="1", help="minimum rank per layer for --rank-budget (default 1)")
    p.add_argument("--alpha-ratio", default="2", help="lora_alpha / r kept on every layer (default 2)")
    p.add_argument("--out", help="also write the JSON to this file")


def _int(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise SpectrascopeError(f"{what} must be a whole number, got {text!r}.") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise SpectrascopeError(f"{what} must be a number, got {text!r}.") from None
    if not math.isfinite(value):
        raise SpectrascopeError(f"{what} must be a finite number, got {text!r}.")
    return value


def _list(text: str, what: str, conv) -> list:
    items = [t for t in text.split(",")]
    if not text.strip() or any(not t.strip() for t in items):
        raise SpectrascopeError(f"{what} must be comma-separated values without empty entries, got {text!r}.")
    return [conv(t, f"each value of {what}") for t in items]


def _float_any(text: str, what: str) -> float:
    """Like _float but lets nan/inf through so the allocation's validation names the layer."""
    try:
        return float(text.strip())
    except ValueError:
        raise SpectrascopeError(f"{what} must be a number, got {text!r}.") from None


def _num_parameters(src, matrices) -> int:
    """The model's parameter count from the source if it knows it, else the sum of its 2-D weight matrices."""
    try:
        n = int(src.num_parameters())
        if n > 0:
            return n
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        pass
    return sum(m.rows * m.cols for m in matrices)


def build(args) -> al.Allocation:
    """Compute the allocation described by parsed arguments (raises SpectrascopeError on bad input)."""
    scores = _list(args.scores, "--scores", _float_any) if args.scores is not None else None
    experts = _list(args.experts, "--experts", _int) if args.experts is not None else None
    budget = _int(args.budget, "--budget")
    beta = _float(args.beta, "--beta")
    min_experts = _int(args.min_experts, "--min")
    max_experts = _int(args.max_experts, "--max")
    rank = _int(args.rank, "--rank")
    rank_budget = _int(args.rank_budget, "--rank-budget")
    min_rank = _int(args.min_rank, "--min-rank")
    alpha_ratio = _float(args.alpha_ratio, "--alpha-ratio")
    modules = [m.strip() for m in args.modules.split(",")] if args.modules else None
    bad = [m for m in modules or [] if m not in al.LINEAR_KINDS]
    if bad:
        raise SpectrascopeError(f"unknown module kinds {bad} in --modules; choose from {','.join(al.LINEAR_KINDS)}.")
    strategy = args.strategy

    matrices = None
    n_layers = None
    label = args.model
    if args.model is not None or (scores is None and experts is None):
        from analysis.config import DEFAULT_MODEL
        from analysis.sources import open_source
        label = args.model or DEFAULT_MODEL
        src = open_source(args.model)
        matrices = src.matrices()
        n_layers = al.n_layers_of(matrices)
        model_params = _num_parameters(src, matrices)
        if scores is None and (strategy == "alphalora" or rank_budget is not None):
            from analysis.engine import analyze
            scores = list(analyze(args.model, source=src).layer_scores())
    alloc = al.allocate(strategy, scores=scores, n_layers=n_layers, budget=budget, beta=beta,
                        min_experts=min_experts, max_experts=max_experts, experts=experts, model=label)
    if matrices is not None:
        alloc.trainable_params = al.count_trainable_params(matrices, alloc.experts, rank, modules,
                                                           model_params).to_dict()
    if rank_budget is not None:
        al.add_rank_allocation(alloc, rank_budget, matrices, beta=beta, min_rank=min_rank, modules=modules,
                               alpha_ratio=alpha_ratio)
    return alloc


def run(args) -> int:
    """Run `allocate`: print the JSON on stdout (and write --out); bad input → one line on stderr, exit 2."""
    def body() -> int:
        text = al.to_json(build(args))
        if args.out:
            try:
                Path(args.out).write_text(text + "\n", encoding="utf-8")
            except OSError as exc:
                raise SpectrascopeError(f"cannot write {args.out}: {exc.strerror or exc}; choose a writable path.")
        print(text)
        return 0
    return guarded(body)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors (unknown option) as one line, exit 2
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: `python -m analysis.cli_allocate [MODEL] [--scores ...] ...`."""
    parser = _OneLineParser(prog="python -m analysis allocate", description=HELP + ".")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

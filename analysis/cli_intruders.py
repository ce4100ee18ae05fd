"""`python -m analysis intruders`: intruder dimensions between a base and a fine-tuned model, ε sweep, mitigation."""
from __future__ import annotations

import argparse
import sys

from analysis.cli_common import guarded, tqdm_progress, write_table
from analysis.types import SpectrascopeError

TABLE = ["name", "layer", "module", "intruders", "min_similarity", "intruder_ranks", "delta_effective_rank"]


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("base", help="the base (pre-trained) model: folder, file, cached hub id or built-in name")
    p.add_argument("finetuned", nargs="?", default=None,
                   help="the fine-tuned model; optional with --adapter (then it must be omitted or equal BASE)")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder: the fine-tuned side is BASE + this adapter, merged")
    p.add_argument("--top-k", type=int, default=10, help="fine-tuned singular vectors examined per matrix (10)")
    p.add_argument("--epsilon", type=float, default=0.5, help="similarity below which a direction intrudes (0.5)")
    p.add_argument("--sweep", action="store_true", help="also print total intruders vs ε over (0, 1)")
    p.add_argument("--out", help="write one row per matrix to FILE.csv or FILE.json")
    p.add_argument("--include-embeddings", action="store_true", help="also compare embedding and head matrices (counted apart from the block total)")
    p.add_argument("--no-cache", action="store_true", help="recompute the base SVDs instead of using the cache")
    p.add_argument("--mitigate", type=float, metavar="LAMBDA",
                   help="scale intruders' singular values by LAMBDA (the paper: 0.7) and write --save DIR")
    p.add_argument("--save", metavar="DIR", help="new folder for the mitigated checkpoint (with --mitigate)")
    p.add_argument("--ray", metavar="ADDRESS", help="spread the matrix pairs over the Ray cluster at ADDRESS "
                   "(HEAD:6379 or ray://HEAD:10001); its nodes must see both models at the same paths")
    return p


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("intruders", help="intruder dimensions of a fine-tune vs its base (Shuttleworth et al.)",
                       description="Count intruder dimensions (Shuttleworth et al., 'LoRA vs Full Fine-tuning: "
                                   "An Illusion of Equivalence'): top-k fine-tuned singular vectors with "
                                   "similarity < ε to every base singular vector, per matrix, with the ΔW "
                                   "spectrum; optionally write a mitigated checkpoint.")
    return _configure(p)


def _sources(args):
    from analysis.sources import open_source
    if args.adapter:
        if args.finetuned is not None and args.finetuned != args.base:
            raise SpectrascopeError("with --adapter the fine-tuned side is BASE + adapter: omit FINETUNED "
                                    f"(got {args.finetuned!r}) or repeat BASE")
        base = open_source(args.base)
        return base, open_source(args.base, adapter=args.adapter)
    if args.finetuned is None:
        raise SpectrascopeError("give the FINETUNED model after BASE, or --adapter DIR for a LoRA adapter")
    return open_source(args.base), open_source(args.finetuned)


def _specs(args) -> tuple[tuple, tuple]:
    """(model, adapter) of the base and the fine-tuned side, as _sources opens them (for Ray tasks to open)."""
    _sources(args)                                    # the same checks, and the sources exist here too
    if args.adapter:
        return (args.base, None), (args.base, args.adapter)
    return (args.base, None), (args.finetuned, None)


def _main(args) -> int:
    from analysis import intruders
    if (args.mitigate is None) != (args.save is None):
        raise SpectrascopeError("--mitigate LAMBDA and --save DIR go together")
    if args.ray and args.mitigate is not None:
        raise SpectrascopeError("--mitigate writes the checkpoint on this machine: drop --ray")
    if args.ray:
        base, fine = _specs(args)
    else:
        base, fine = _sources(args)
    update, close = tqdm_progress("comparing")
    try:
        if args.ray:
            from analysis import ray_fanout
            mit = None
            report = ray_fanout.compare(args.ray, base, fine, top_k=args.top_k, epsilon=args.epsilon,
                                        progress=update, include_embeddings=args.include_embeddings,
                                        use_cache=not args.no_cache)
        elif args.mitigate is not None:
            mit = intruders.mitigate(base, fine, args.save, lam=args.mitigate, top_k=args.top_k,
                                     epsilon=args.epsilon, progress=update,
                                     include_embeddings=args.include_embeddings, use_cache=not args.no_cache)
            report = mit.report
        else:
            mit = None
            report = intruders.compare(base, fine, top_k=args.top_k, epsilon=args.epsilon, progress=update,
                                       include_embeddings=args.include_embeddings, use_cache=not args.no_cache)
    finally:
        close()
    for flag in report.flags:
        print(f"note: {flag}")
    table = report.rows
    if args.out:
        extra = {k: v for k, v in report.to_dict().items() if k != "rows"}
        write_table(table, args.out, extra)
        print(f"wrote {args.out}")
    else:
        print(table[TABLE].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, why in report.skipped:
        print(f"skipped {name}: {why}")
    if args.sweep:
        print()
        print(report.sweep().to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if mit is not None:
        for note in mit.notes:
            print(f"note: {note}")
        print(f"wrote {mit.out_dir}: scaled {mit.total_scaled} intruder direction(s) by λ={mit.lam:g}")
    print(report.summary())
    return 0


def run(args) -> int:
    return guarded(lambda: _main(args))


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m analysis.cli_intruders",
                                                description="Intruder dimensions of a fine-tune vs its base"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

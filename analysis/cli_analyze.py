"""`python -m analysis analyze`: per-matrix spectra and α of a model, per-layer summary, optional weightwatcher run."""
from __future__ import annotations

import argparse
import sys

from analysis.cli_common import format_table, guarded, tqdm_progress, write_rows, write_table
from analysis.types import SpectrascopeError

CONTRACT = ["name", "layer", "module", "rows", "cols", "alpha", "alpha_hill", "xmin", "D", "stable_rank",
            "log_spectral_norm"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="per-matrix ESD metrics and heavy-tail α of a model",
                       description="Analyse every 2-D weight matrix of MODEL (default: the embedded "
                                   "all-MiniLM-L6-v2): a checkpoint folder, a .safetensors/.bin/.gguf file, a "
                                   "hub id ORG/NAME[@REVISION] (downloaded into the Hugging Face cache unless "
                                   "HF_HUB_OFFLINE=1; see docs/hub.md), or a built-in name (all-MiniLM-L6-v2, "
                                   "SmolLM2-135M-Instruct).")
    p.add_argument("model", nargs="?", default=None,
                   help="model folder, file, hub id ORG/NAME[@REVISION] or built-in name")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder, merged into MODEL before analysis")
    p.add_argument("--out", help="write one row per matrix to FILE.csv or FILE.json")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")
    p.add_argument("--engine", choices=["native", "weightwatcher"], default="native",
                   help="native (default) or weightwatcher 0.7.7 on the same model, for comparison")
    p.add_argument("--ray", metavar="ADDRESS", help="spread the matrices over the Ray cluster at ADDRESS (HEAD:6379 "
                   "or ray://HEAD:10001); its nodes must see MODEL at the same path (docs/cluster.md)")
    return p


def _print_layers(layers: list[dict], file=sys.stdout) -> None:
    if not layers:
        print("(no transformer blocks recognised: no per-layer summary)", file=file)
        return
    cols = ["layer", "alphalora_score", "alpha", "alpha_weighted", "stable_rank", "log_spectral_norm", "matrices"]
    print(format_table(layers, cols), file=file)


def _run_native(args) -> int:
    from analysis import esd
    from analysis.engine import analyze
    update, close = tqdm_progress("analysing")
    fetched, fetch_close = tqdm_progress("downloading", nbytes=True)
    try:
        res = analyze(args.model, args.adapter, device=args.device, use_cache=not args.no_cache, progress=update,
                      download=fetched, ray=args.ray)
    finally:
        fetch_close()
        close()
    for flag in res.flags:
        print(f"note: {flag}")
    origin = {k: v for k, v in (res.identity or {}).get("hub", {}).items() if k in ("repo", "commit")}
    if origin:
        print(f"note: {origin['repo']} at commit {origin['commit']}")
    from analysis.engine import COLUMNS, json_rows
    if args.out:
        write_rows(res.rows, COLUMNS, args.out, {"model": res.model, "flags": res.flags, **({"hub": origin} if origin
                                                 else {}), "layers": json_rows(res.layer_rows)})
    else:
        print(format_table(res.rows, CONTRACT + ["alpha_se", "verdict"]))
        print()
    ok = sum(r["status"] == "ok" for r in res.rows)
    src = "cache" if res.from_cache else f"{res.elapsed_s:.1f} s"
    bad = sum(r.get("verdict") == esd.UNRELIABLE for r in res.rows)
    print(f"{res.model}: {ok} of {len(res.rows)} matrices analysed ({src}); {bad} unreliable weightwatcher fits "
          f"(KS D > {esd.KS_D_MAX:g}, α > {esd.ALPHA_SPURIOUS:g}, tail < {esd.MIN_TAIL} or rank-deficient)")
    for name, why in res.skipped:
        print(f"skipped {name}: {why}")
    _print_layers(res.layer_rows)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _run_weightwatcher(args) -> int:
    from analysis.sources import open_source
    from analysis.ww_oracle import run_weightwatcher
    if args.ray:
        raise SpectrascopeError("--engine weightwatcher runs on this machine: drop --ray or use --engine native")
    if args.adapter:
        raise SpectrascopeError("--engine weightwatcher cannot merge --adapter; analyse the merged model "
                                "(peft merge_and_unload + save_pretrained) or use --engine native")
    fetched, fetch_close = tqdm_progress("downloading", nbytes=True)
    try:
        src = open_source(args.model, download=fetched)
        folder = src.hf_folder()
    finally:
        fetch_close()
    if folder is None:
        raise SpectrascopeError(f"{src.label} is not a folder transformers can load; weightwatcher needs one")
    print("running weightwatcher 0.7.7 analyze() in a subprocess…", file=sys.stderr)
    df = run_weightwatcher(folder)
    for flag in src.flags:
        print(f"note: {flag}")
    cols = [c for c in ["name", "rows", "cols", "alpha", "xmin", "D", "stable_rank", "log_spectral_norm"] if c in df]
    if args.out:
        write_table(df, args.out, {"model": src.label, "engine": "weightwatcher 0.7.7"})
        print(f"wrote {args.out}")
    else:
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"weightwatcher analysed {len(df)} matrices in {df.attrs['seconds']:.1f} s")
    return 0


def run(args) -> int:
    return guarded(lambda: _run_weightwatcher(args) if args.engine == "weightwatcher" else _run_native(args))

"""weightwatcher 0.7.7 as an independent oracle, run in a child process (it silences all warnings on import)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from analysis.types import SpectrascopeError

WW_COLUMNS = {"alpha": "alpha", "xmin": "xmin", "D": "D", "stable_rank": "stable_rank",
              "log_spectral_norm": "log_spectral_norm", "log_norm": "log_norm", "alpha_weighted": "alpha_weighted",
              "log_alpha_norm": "log_alpha_norm", "num_pl_spikes": "num_pl_spikes", "sigma": "sigma",
              "entropy": "entropy", "matrix_rank": "matrix_rank"}


def run_weightwatcher(folder: str | Path, causal: bool | None = None, timeout: float = 3600) -> pd.DataFrame:
    """weightwatcher `analyze()` (defaults) on the Hugging Face model in `folder`, in a subprocess.

    Returns one row per analysed layer with `name` (module name + '.weight', as in a checkpoint),
    `rows`, `cols` and weightwatcher's metrics under our column names, plus `seconds` (analyze() time).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ww.json"
        cmd = [sys.executable, "-m", "analysis.ww_oracle", str(folder), "--out", str(out)]
        if causal is not None:
            cmd.append("--causal" if causal else "--encoder")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise SpectrascopeError("weightwatcher failed on " + str(folder) + ": " + " | ".join(tail))
        payload = json.loads(out.read_text())
    df = pd.DataFrame(payload["rows"])
    df.attrs["seconds"] = payload["seconds"]
    return df


def match_names(ours: list[str], ww_names: list[str]) -> dict[str, str]:
    """Map weightwatcher names to our checkpoint tensor names (suffix match: a base-model prefix may differ)."""
    mapping = {}
    for w in ww_names:
        hits = [o for o in ours if o == w or o.endswith("." + w) or w.endswith("." + o)]
        if len(hits) == 1:
            mapping[w] = hits[0]
    return mapping


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run weightwatcher.analyze() on a Hugging Face model folder")
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--causal", action="store_true")
    kind.add_argument("--encoder", action="store_true")
    a = p.parse_args(argv)
    import time

    import transformers
    cfg = transformers.AutoConfig.from_pretrained(a.folder)
    causal = a.causal or (not a.encoder and any(x.endswith("ForCausalLM") for x in (cfg.architectures or [])))
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = cls.from_pretrained(a.folder, dtype="float32")
    import weightwatcher as ww  # imported here only: it changes global warning filters
    t0 = time.perf_counter()
    details = ww.WeightWatcher(model=model).analyze()
    seconds = time.perf_counter() - t0
    rows = []
    for _, r in details.iterrows():
        longname = r.get("longname") or r["name"]
        row = {"name": f"{longname}.weight", "layer_id": int(r["layer_id"]), "rows": int(r.get("N", 0)), "cols": int(r.get("M", 0))}
        for src, dst in WW_COLUMNS.items():
            if src in r:
                row[dst] = float(r[src])
        rows.append(row)
    Path(a.out).write_text(json.dumps({"rows": rows, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())

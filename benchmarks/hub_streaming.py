"""Hub download + analysis, streamed shard by shard vs. download-then-analyse, against the throttled fake hub."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub_server import FakeHub  # noqa: E402

RATE_MB_S = float(os.environ.get("RATE_MB_S", "40"))
# Both runs in a fresh process with a fresh cache; times from the start of open/analyze.
SCRIPT = r"""
import sys, time
from analysis.engine import analyze
from analysis.sources import open_source
t0 = time.perf_counter()
first = []
if sys.argv[1] == "stream":
    res = analyze(sys.argv[2], use_cache=False, progress=lambda d, t, n: first or first.append(time.perf_counter()))
    done = time.perf_counter()
    print(f"{first[0] - t0:.2f} {done - t0:.2f} {done - t0:.2f} {len(res.rows)}")
else:
    folder = open_source(sys.argv[2]).hf_folder()          # everything downloaded first
    fetched = time.perf_counter()
    res = analyze(folder, use_cache=False, progress=lambda d, t, n: first or first.append(time.perf_counter()))
    done = time.perf_counter()
    print(f"{first[0] - t0:.2f} {fetched - t0:.2f} {done - t0:.2f} {len(res.rows)}")
"""


def build(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408,
                                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8))
    model.save_pretrained(folder, max_shard_size="20MB")
    return folder


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = build(tmp / "model")
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        shards = len(list(folder.glob("*.safetensors")))
        hub = FakeHub().start()
        hub.rate = RATE_MB_S * 1e6
        hub.add("org/bench", folder)
        print(f"{size / 1e6:.0f} MB in {shards} shards, served at {RATE_MB_S:g} MB/s")
        print(f"{'mode':<22} {'first matrix s':>15} {'downloaded s':>13} {'done s':>8} {'matrices':>9}")
        for mode in ("stream", "download-then-analyse"):
            env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
            env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / f"hf-{mode}"), SPECTRASCOPE_DATA=str(tmp / "data"),
                       PYTHONPATH=str(ROOT))
            out = subprocess.run([sys.executable, "-c", SCRIPT, mode.split("-")[0], "org/bench"], env=env,
                                 capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
            print(f"{mode:<22} {out[0]:>15} {out[1]:>13} {out[2]:>8} {out[3]:>9}")
        hub.stop()


if __name__ == "__main__":
    main()

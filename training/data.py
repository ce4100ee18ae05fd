"""Datasets for training and evaluation: reading built-in and user files, seeded splits, tokenisation and batching."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from analysis.types import SpectrascopeError

ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = ROOT / "assets" / "data"
FORMATS = ("jsonl", "json", "csv", "tsv", "hf_disk", "class_folders")
SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------- reading files

@dataclass
class Records:
    """Rows read from one source, with where each came from (for error messages)."""

    rows: list[dict]
    origin: str                                   # file or folder name shown to the user
    lines: list[int] | None = None                # 1-based line number of each row, when it has one
    columns: list[str] = field(default_factory=list)

    def where(self, i: int) -> str:
        """'line 17 of data.jsonl' or 'row 17 of data' for row index i."""
        if self.lines is not None:
            return f"line {self.lines[i]} of {self.origin}"
        return f"row {i + 1} of {self.origin}"


def guess_format(path: Path) -> str:
    """The format of a source from its name: jsonl (also .jsonl.gz), json, csv, tsv, or a folder kind."""
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return "hf_disk"
        return "class_folders"
    name = path.name.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                        (".tsv", "tsv")):
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return fmt
    raise SpectrascopeError(f"cannot tell the format of {path.name}: use a .jsonl, .csv, .tsv or .json file, "
                            f"a datasets save_to_disk folder, or set 'format:' to one of {', '.join(FORMATS)}")


def read_records(path: str | Path, fmt: str | None = None) -> Records:
    """Read every row of a JSONL / JSON / CSV / TSV file (optionally .gz), a save_to_disk folder or class folders."""
    path = Path(path)
    if not path.exists():
        raise SpectrascopeError(f"data file not found: {path} (check the path; relative paths are resolved "
                                f"against the task config's folder)")
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise SpectrascopeError(f"unknown data format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "hf_disk":
        return _read_hf_disk(path)
    if fmt == "class_folders":
        return _read_class_folders(path)
    if path.is_dir():
        raise SpectrascopeError(f"{path} is a folder, but format {fmt!r} needs a file")
    text = _read_text(path)
    if not text.strip():
        raise SpectrascopeError(f"data file is empty: {path.name}")
    if fmt == "jsonl":
        return _parse_jsonl(text, path.name)
    if fmt == "json":
        return _parse_json(text, path.name)
    return _parse_csv(text, path.name, "\t" if fmt == "tsv" else ",")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise SpectrascopeError(f"{path.name} is not a valid gzip file: {exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpectrascopeError(f"{path.name} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None


def _parse_jsonl(text: str, name: str) -> Records:
    rows, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):   # not splitlines(): texts may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpectrascopeError(f"bad JSON on line {number} of {name}: {exc.msg} (column {exc.colno}); "
                                    f"each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise SpectrascopeError(f"line {number} of {name} is not a JSON object "
                                    f"(got {type(row).__name__}); each line must look like {{\"text\": ...}}")
        rows.append(row)
        lines.append(number)
    return Records(rows, name, lines, _columns(rows))


def _parse_json(text: str, name: str) -> Records:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpectrascopeError(f"bad JSON in {name} on line {exc.lineno}: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise SpectrascopeError(f"{name} must hold a JSON list of objects (or {{\"data\": [...]}})")
    if not data:
        raise SpectrascopeError(f"data file is empty: {name} holds no rows")
    return Records(data, name, None, _columns(data))


def _parse_csv(text: str, name: str, delimiter: str) -> Records:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c for c in (reader.fieldnames or []) if c is not None]
    rows, lines = [], []
    for row in reader:
        if all(v in (None, "") for v in row.values()):
            continue
        if None in row:
            raise SpectrascopeError(f"line {reader.line_num} of {name} has more fields than the header "
                                    f"({len(header)}: {', '.join(header)}); quote fields that contain "
                                    f"{'tabs' if delimiter == chr(9) else 'commas'}")
        rows.append(row)
        lines.append(reader.line_num)
    if not rows:
        raise SpectrascopeError(f"data file is empty: {name} has a header but no rows")
    return Records(rows, name, lines, header)


def _read_hf_disk(path: Path) -> Records:
    """A datasets.save_to_disk folder: a Dataset, or a DatasetDict whose split names go in a 'split' column."""
    try:
        import datasets
    except ImportError:
        raise SpectrascopeError("reading a save_to_disk folder needs the datasets package: "
                                "pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "not a dataset folder"
        raise SpectrascopeError(f"cannot read {path.name} as a datasets save_to_disk folder: {exc}") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    rows = []
    for split, dataset in parts:
        for row in dataset:
            if split is not None:
                row = {**row, "split": split}
            rows.append(row)
    if not rows:
        raise SpectrascopeError(f"data folder is empty: {path.name} holds no rows")
    return Records(rows, path.name, None, _columns(rows))


def _read_class_folders(path: Path) -> Records:
    """One sub-folder per class, one text file per example: rows {'text', 'label': folder name, 'file'}."""
    rows = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")
            rows.append({"text": text.strip(), "label": folder.name, "file": f"{folder.name}/{file.name}"})
    if not rows:
        raise SpectrascopeError(f"data folder is empty: {path.name} has no class sub-folders with text files")
    return Records(rows, path.name, None, ["text", "label", "file"])


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def package_folder(package: str, subpath: str = "") -> Path:
    """A folder inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpectrascopeError(f"not available: pip install {package.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0]) / subpath


def write_jsonl_gz(path: Path, rows: Iterable[dict]) -> None:
    """Write rows as gzip JSONL with fixed header bytes (mtime 0, no name), so rebuilds are byte-identical."""
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0,
                                                    compresslevel=9) as gz:
        gz.write(body)


# ----------------------------------------------------------------------------------------------- splits

def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """How many of n items go to each part: n·ratio rounded half up for every part but the first (the rest)."""
    counts = [math.floor(n * r + 0.5 + 1e-9) for r in ratios[1:]]
    while sum(counts) > n:                       # tiny groups: shrink the last parts first
        i = max(j for j, c in enumerate(counts) if c > 0)
        counts[i] -= 1
    return [n - sum(counts)] + counts


def assign_splits(keys: list, seed: int = 0, ratios: tuple[float, ...] = (0.8, 0.1, 0.1),
                  names: tuple[str, ...] = SPLITS, stratify: bool = True) -> list[str]:
    """A reproducible split name for each item; with stratify, each key value (label) is split separately.

    Items are shuffled with random.Random(seed) group by group (groups in sorted order), so the same keys, seed and
    ratios always give the same assignment.
    """
    if len(ratios) != len(names) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise SpectrascopeError(f"split ratios {list(ratios)} must be {len(names)} non-negative numbers "
                                f"summing to 1 (for {', '.join(names)})")
    rng = random.Random(seed)
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key if stratify else 0, []).append(i)
    out = [""] * len(keys)
    for key in sorted(groups, key=repr):
        members = groups[key]
        rng.shuffle(members)
        start = 0
        for name, count in zip(names, split_counts(len(members), ratios)):
            for i in members[start:start + count]:
                out[i] = name
            start += count
    return out


# ----------------------------------------------------------------------------------------------- tokenisation

def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def _stack(seqs: list[list[int]], labels: list[list[int]] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token lists to the longest; padding has attention 0 and label -100."""
    width = max((len(s) for s in seqs), default=0)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention}
    if labels is not None:
        out["labels"] = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for i, seq in enumerate(seqs):
        input_ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, :len(seq)] = 1
        if labels is not None:
            out["labels"][i, :len(seq)] = torch.tensor(labels[i], dtype=torch.long)
    return out


def encode_classification(rows: list[dict], tokenizer, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Rows {'text', 'label'} -> input_ids, attention_mask (right-padded to the longest, at most max_length)
    and labels (one class index per row). The tokenizer adds its own special tokens ([CLS] ... [SEP])."""
    if not rows:
        raise SpectrascopeError("nothing to encode: the split has no rows")
    seqs = [list(tokenizer(r["text"], add_special_tokens=True, truncation=True, max_length=max_length,
                           verbose=False)["input_ids"]) for r in rows]
    out = _stack(seqs, None, _pad_id(tokenizer))
    out["labels"] = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
    return out


def encode_causal_sft(rows: list[dict], tokenizer, max_length: int = 256,
                      add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Rows {'prompt', 'answer'} -> input_ids, attention_mask, labels for a decoder; loss on answer tokens only.

    Each sequence is [bos] + prompt + answer (+ eos). Labels are -100 on bos, prompt and padding, so the loss is
    the answer's. Prompt and answer are tokenised separately (the answer keeps its leading space, e.g.
    " positive"), so the answer tokens are exactly those the model is scored on. A sequence longer than max_length
    loses prompt tokens from the left (the end of the prompt and the answer are kept).
    """
    if not rows:
        raise SpectrascopeError("nothing to encode: the split has no rows")
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    seqs, labels = [], []
    for row in rows:
        prompt = ([bos] if bos is not None else []) + _ids(tokenizer, row["prompt"], False)
        answer = _ids(tokenizer, row["answer"], False) + ([eos] if add_eos and eos is not None else [])
        if len(answer) >= max_length:
            raise SpectrascopeError(f"max_length {max_length} is too short for an answer of {len(answer)} tokens "
                                    f"({row['answer'][:40]!r}); raise max_length")
        prompt = prompt[max(0, len(prompt) + len(answer) - max_length):]
        seqs.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    return _stack(seqs, labels, _pad_id(tokenizer))


def encode_lm(text: str | list[str], tokenizer, block_size: int = 128) -> dict[str, torch.Tensor]:
    """Plain text (or passages, joined by blank lines) -> consecutive blocks of block_size tokens.

    Returns input_ids, attention_mask and labels (= input_ids; the model shifts them) of shape (n_blocks,
    block_size). The tail shorter than one block is dropped, unless the whole text is shorter than one block, in
    which case it is the only (padded) block.
    """
    if not isinstance(text, str):
        text = "\n\n".join(text)
    ids = _ids(tokenizer, text, False)
    if not ids:
        raise SpectrascopeError("nothing to encode: the text is empty")
    if len(ids) < block_size:
        return _stack([ids], [ids], _pad_id(tokenizer))
    n = len(ids) // block_size
    blocks = torch.tensor(ids[:n * block_size], dtype=torch.long).view(n, block_size)
    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks), "labels": blocks.clone()}


def batches(encoded: dict[str, torch.Tensor], batch_size: int, seed: int = 0, shuffle: bool = True,
            drop_last: bool = False, trim: bool = True) -> list[dict[str, torch.Tensor]]:
    """Split encoded tensors into batches; the order depends only on (seed, shuffle), never on global RNG state.

    With trim, columns that are padding in every row of a batch are cut off (right padding), which saves time on
    CPU without changing any result.
    """
    if batch_size < 1:
        raise SpectrascopeError(f"batch_size must be at least 1, got {batch_size}")
    n = len(next(iter(encoded.values())))
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    else:
        order = torch.arange(n)
    out = []
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        if drop_last and len(index) < batch_size:
            break
        batch = {k: v[index] for k, v in encoded.items()}
        mask = batch.get("attention_mask")
        if trim and mask is not None and mask.dim() == 2 and mask.numel():
            width = int(mask.sum(dim=1).max())
            batch = {k: (v[:, :width] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v)
                     for k, v in batch.items()}
        out.append(batch)
    return out

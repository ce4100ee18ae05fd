"""Shared page glue: the sidebar model picker, the memoised analysis runner, error display, and the URL view sync."""
from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

import streamlit as st

from analysis import engine
from analysis.config import DEFAULT_MODEL, SMOLLM2
from analysis.types import SpectrascopeError

BUILTINS = [DEFAULT_MODEL, SMOLLM2]
OTHER = "Other: folder, file or hub id…"
DEVICES = ["auto", "cpu", "cuda"]
MAX_RESULTS = 6                      # analyses kept in memory (shared by all sessions)

# The current view lives in st.session_state["view_<name>"] (strings) and is mirrored into st.query_params[name],
# so a refresh or a shared link restores it. A page adds its own names with register_view_keys(); a page's URL
# carries the shared names and its own only (the others stay in the session for when the user comes back).
SHARED_KEYS = ("model", "adapter", "device", "layer", "score")     # the sidebar's model; the layer Overview picks
VIEW_KEYS = [*SHARED_KEYS, "matrix", "metric", "fit", "model_b", "adapter_b"]
_PAGE = "_view_page"                 # the url path of the page running now (set_page, from main.py)
_PAGE_KEYS = "_view_page_keys"       # {page url path: the view names that page registered}
SELECTED_LAYER = "view_layer"        # the selected layer (chart click, selectbox, ?layer=); tests set it directly
_INIT_FLAG = "_view_initialised"
_FROM_URL = "_view_from_url"         # {name: value} the URL gave that no widget has checked yet
_NOTICES = "_view_notices"           # what could not be shown as asked (drawn above the page by main.py)


# ---------------------------------------------------------------- view state <-> URL

def seed_view(*names: str) -> None:
    """Seed view settings from the URL's query parameters where the session has none yet (values already set win).

    The one place the URL seeds the view: init_view (the shared names, once per session), register_view_keys
    (a page's own names) and pages that re-check theirs call it. What the URL gave is remembered until a widget
    shows it, so that a value it cannot show is reported (url_fallback) instead of silently replaced.
    """
    given = st.session_state.setdefault(_FROM_URL, {})
    for n in names:
        if n in st.query_params and f"view_{n}" not in st.session_state:
            st.session_state[f"view_{n}"] = given[n] = st.query_params[n]


def register_view_keys(*names: str) -> None:
    """Let the page running now keep more of its view in its URL; values already in the URL are restored on
    first use."""
    for n in names:
        if n not in VIEW_KEYS:
            VIEW_KEYS.append(n)
    page = st.session_state.get(_PAGE)
    if page is not None:
        st.session_state.setdefault(_PAGE_KEYS, {}).setdefault(page, set()).update(names)
    seed_view(*names)                # pages register after init_view ran: seed their names the same way


def set_page(url_path: str) -> None:
    """Name the page this run shows (main.py, before the page runs): its URL carries its own view names only."""
    st.session_state[_PAGE] = url_path


def in_url(name: str) -> bool:
    """Whether the current page's URL carries view setting `name`: a shared one, or one the page registered (every
    name while no page is set, as in tests that run a page file alone)."""
    page = st.session_state.get(_PAGE)
    return page is None or name in SHARED_KEYS or name in st.session_state.get(_PAGE_KEYS, {}).get(page, ())


def init_view() -> None:
    """Once per session: seed the view from the URL's query parameters (values already set win)."""
    if st.session_state.get(_INIT_FLAG):
        return
    seed_view(*VIEW_KEYS)
    st.session_state[_INIT_FLAG] = True


def view(name: str, default: str | None = None) -> str | None:
    """The current value of one view setting (a string), or default."""
    value = st.session_state.get(f"view_{name}")
    return default if value in (None, "") else str(value)


def set_view(name: str, value) -> None:
    """Change one view setting (None or '' clears it)."""
    st.session_state[f"view_{name}"] = None if value is None else str(value)


def parsed_view(name: str, default, parse=str):
    """The view setting `name` as parse(text) gives it (parse may also clamp); default when it is missing or
    parse raises TypeError / ValueError (a link's unreadable value is reported)."""
    raw = view(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (TypeError, ValueError):
        url_fallback(name, raw, str(default), "cannot be read")
        return default


def url_fallback(name: str, asked: str | None, shown: str, why: str = "is not one of the choices") -> None:
    """Say (once, above the page) that the link's `name=asked` cannot be shown and `shown` is shown instead.

    Silent when `asked` did not come from the URL (a value left from another model or layer is no news). Call
    url_checked(name) when the value could be shown."""
    given = st.session_state.get(_FROM_URL, {})
    if asked is None or name not in given:
        return
    if str(given.pop(name)) == str(asked):
        notice(f"The link asks for **{name}={asked}**, which {why}: showing **{shown}** instead.")


def url_asked(name: str) -> str | None:
    """The value the link gave for `name` while no widget has checked it yet, else None."""
    value = st.session_state.get(_FROM_URL, {}).get(name)
    return None if value is None else str(value)


def url_checked(name: str) -> None:
    """The link's value of `name` (if any) was shown as asked: nothing to report later."""
    st.session_state.get(_FROM_URL, {}).pop(name, None)


def notice(text: str) -> None:
    """A warning for the top of the page (drawn by show_notices), each text once."""
    notices = st.session_state.setdefault(_NOTICES, [])
    if text not in notices:
        notices.append(text)


def show_notices(where=None) -> None:
    """Draw and forget the pending notices (main.py draws them above every page after it ran)."""
    for text in st.session_state.pop(_NOTICES, []):
        (where or st).warning(text, icon=":material/link_off:")


def unknown_path(url: str | None, known: list[str], base: str = "") -> str | None:
    """The page path of a browser URL when it names none of the `known` page paths (Streamlit then runs the
    default page), else None; `base` is the server's baseUrlPath."""
    if not url:
        return None
    path = urlsplit(url).path.strip("/")
    base = (base or "").strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].strip("/")
    return path if path and path not in known else None


def sync_query_params() -> None:
    """Mirror the view into st.query_params, touching only what changed (each change updates the URL)."""
    for name in VIEW_KEYS:
        value = view(name) if in_url(name) else None
        current = st.query_params.get(name)
        if value is None and current is not None:
            if f"view_{name}" not in st.session_state:     # arrived with a link (st.page_link query_params): keep it
                seed_view(name)
                continue
            del st.query_params[name]
        elif value is not None and current != value:
            st.query_params[name] = value


def bound(widget, label: str, name: str, value, where=None, **kw):
    """A widget whose value is the view setting `name`: shown at `value` (the caller reads the view, e.g. with
    parsed_view, and checks it), each change written back to the view and so to the URL.

    `widget` is a Streamlit widget function (st.slider, a column's number_input…) or its name ("slider", called on
    `where`, default st). The one way pages bind a widget to the URL.
    """
    key = f"w_{name}"
    st.session_state[key] = value
    set_view(name, value)

    def changed() -> None:
        set_view(name, st.session_state[key])

    function = getattr(where or st, widget) if isinstance(widget, str) else widget
    return function(label, key=key, on_change=changed, **kw)


def bound_selectbox(label: str, options: list, name: str, default=None, where=None, **kw):
    """A selectbox whose value is the view setting `name` (restored from the URL, written back on change).

    Options may be any values; the view stores str(option). Unknown or missing values fall back to default
    (or the first option); a link's unknown value is reported above the page.
    """
    labels = [str(o) for o in options]
    asked = view(name)
    current = asked
    if current not in labels:
        current = str(default) if default is not None and str(default) in labels else labels[0]
        shown = kw.get("format_func", str)(options[labels.index(current)])
        url_fallback(name, asked, shown, f"is not one of the {label.lower()} choices here")
    else:
        url_checked(name)
    return bound("selectbox", label, name, options[labels.index(current)], where=where, options=options, **kw)


def bound_text(label: str, name: str, where=None, **kw) -> str:
    """A text input whose value is the view setting `name` (surrounding spaces dropped)."""
    url_checked(name)
    text = (bound("text_input", label, name, view(name, "") or "", where=where, **kw) or "").strip()
    set_view(name, text)             # the view (and the URL) without the surrounding spaces
    return text


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
        where.text_input("Checkpoint folder, .safetensors/.gguf file, or hub id", key=path_key,
                         on_change=path_changed, placeholder="/path/to/checkpoint  or  org/name[@revision]",
                         help="Press Enter to analyse. A hub id that is not in the local Hugging Face cache is "
                              "downloaded (safetensors weights, config, tokenizer; HF_TOKEN or `hf auth login` for "
                              "gated models), unless HF_HUB_OFFLINE=1 is set.")
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

class LRUMemo:
    """A small thread-safe memo that keeps the `size` most recently used entries (get / put / pop)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        """The value of `key` (now the most recently used), or default."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        """Keep `value` under `key`, dropping the least recently used entries beyond `size`."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key) -> None:
        with self._lock:
            self._items.pop(key, None)

    def get_or_compute(self, key, compute):
        """The memoised value of `key`, computing (outside the lock) and keeping it when missing or None."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._items)


@st.cache_resource(show_spinner=False)
def shared_memo(name: str, size: int) -> LRUMemo:
    """The LRUMemo called `name`, shared by all sessions and reruns for the server's life."""
    return LRUMemo(size)


def _store() -> LRUMemo:
    """Analyses kept in memory across reruns and sessions (most recently used last)."""
    return shared_memo("analyses", MAX_RESULTS)


def forget(choice: ModelChoice) -> None:
    _store().pop(choice.key)


def cached_result(choice: ModelChoice):
    """The in-memory analysis for a choice, or None."""
    return _store().get(choice.key)


def _remember(choice: ModelChoice, result) -> None:
    _store().put(choice.key, result)


def analysis_for(choice: ModelChoice, where=None):
    """Analyse a model with a live progress bar (matrices done / total, ETA); errors shown, result or None."""
    result = cached_result(choice)
    if result is not None:
        return result
    where = where or st
    box = where.empty()
    bar = box.progress(0.0, text=f"Opening {choice.label}…")
    t0 = time.perf_counter()
    first: list[tuple[float, int]] = []            # (time, matrices done) at the first matrix: ETA from there on

    def phase(text: str) -> None:
        bar.progress(0.0, text=f"{choice.label}: {text}… · {time.perf_counter() - t0:,.0f} s")

    def progress(done: int, total: int, name: str) -> None:
        now = time.perf_counter()
        if not first:
            first.append((now, done))
        t1, d1 = first[0]
        eta = (f" · ETA {(now - t1) / (done - d1) * (total - done):,.0f} s" if done - d1 >= 2 and done < total
               else "")                            # only from measured matrices (never from the opening's time)
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"Analysing {choice.label}: {done}/{total} matrices{eta} · {now - t0:,.0f} s so far · "
                          f"{name}")

    def download(done: int, total: int, name: str) -> None:
        mb = 1024 * 1024
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"Downloading {choice.model}: {done / mb:,.0f} / {total / mb:,.0f} MB · {name}")

    try:
        result = engine.analyze(choice.model, choice.adapter, device=choice.device, progress=progress,
                                download=download, phase=phase)
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
    asked = view("layer")
    try:
        wanted = int(float(asked))
    except (TypeError, ValueError, OverflowError):
        wanted = None
    if wanted in layers:
        layer = wanted
        url_checked("layer")
    else:
        layer = layers[0] if wanted is None else min(layers, key=lambda x: abs(x - wanted))
        url_fallback("layer", asked, f"layer {layer}",
                     f"is not a layer of this model (it has layers {layers[0]}–{layers[-1]})")
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

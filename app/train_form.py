"""The Train page's New-run form: model, task, method, options, allocation, run name; kept across page switches
and browser refreshes, checked before anything is queued."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import allocation_store
from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from app import common
from training import registry
from training.jobs import JobStore, default_name, gpu_count, name_problem
from training.model_check import model_problem
from training.trainer import TrainConfig

K = "tr_"                                  # prefix of the form's widget keys
NO_ALLOCATION = "(none)"
DEFAULTS = TrainConfig()                   # the form shows TrainConfig's defaults
URL = "new_"                               # the form's values in the URL and the view: ?new_max_steps=30&new_lr=0.001
FIELDS = "_tr_fields"                      # {field: (default, type)} of the inputs this run drew
CLEAR_NAME = "_tr_clear_name"              # set after a submit: the next run starts with an empty run name
ROUTINGS = ["token", "prompt"]
NONE = "none"                              # an emptied number field in the URL (e.g. all rows)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the form's values, kept

def _default(key: str, value, kind: type | None = None, options: list | None = None) -> str:
    """The key of the form field `key` (default `value`, of type `kind`, one of `options` if given), its state
    seeded once.

    Widgets get their value from here, never from value= (so no warnings); the fields that may be empty pass
    value=None, so that emptying one means None (all rows, the method's lr…), not the minimum. A field's first
    value in a session comes from the view (what this session last had: leaving the page drops widget states) or
    the URL (a refresh or a shared link), else the default; remember_form() keeps both current. A link's value
    that cannot be used is reported above the page.
    """
    kind = kind or (type(value) if value is not None else str)
    st.session_state.setdefault(FIELDS, {})[key] = (value, kind)
    if K + key not in st.session_state:
        common.seed_view(URL + key)
        text = common.view(URL + key)
        try:
            st.session_state[K + key] = value if text is None else _decode(text, kind, options)
        except (KeyError, ValueError, OverflowError):
            why = "is not one of the choices" if options is not None else "cannot be read"
            common.url_fallback(URL + key, text, _shown(value), why)
            st.session_state[K + key] = value
    return K + key


def _shown(value) -> str:
    return "empty" if value is None else _encode(value)


def _encode(value) -> str:
    if value is None:
        return NONE
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _decode(text: str, kind: type, options: list | None = None):
    """A field's value from its view / URL text (KeyError / ValueError when unreadable or not an option)."""
    if options is not None and text not in options:
        raise KeyError(text)
    if kind is bool:
        return {"true": True, "false": False}[text.lower()]
    if kind in (int, float):
        if text.lower() == NONE:
            return None
        number = float(text)
        if not math.isfinite(number) or kind is int and number != int(number):
            raise ValueError(text)
        return kind(number)
    return text


def remember_form() -> None:
    """Keep the drawn fields' values that differ from their defaults in the view (for this session) and the URL
    (for a refresh); the URL carries the form only while the Train page is open (navigation clears it)."""
    for key, (default, kind) in st.session_state.get(FIELDS, {}).items():
        value = st.session_state.get(K + key)
        asked = common.url_asked(URL + key)            # the link's value, not yet checked: did the widget take it?
        if asked is not None:
            try:
                taken = _decode(asked, kind) == value
            except (KeyError, ValueError, OverflowError):
                taken = False
            if taken:
                common.url_checked(URL + key)
            else:                                      # out of range, or a model that is not offered
                common.url_fallback(URL + key, asked, _shown(value), "cannot be used here")
        common.set_view(URL + key, None if value == default else _encode(value))
    for name in [k[len("view_"):] for k in st.session_state if str(k).startswith("view_" + URL)]:
        value = common.view(name)
        if value is None:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != value:
            st.query_params[name] = value


def forget_name() -> None:
    """After a submit: the next run of the form starts with an empty run name (a fresh name is suggested)."""
    st.session_state[CLEAR_NAME] = True


# ---------------------------------------------------------------- tasks, models, allocations

@st.cache_data(ttl=60, show_spinner=False)
def task_kinds(data: str) -> dict[str, str]:
    """Registered task name -> kind (built-ins and <data>/tasks); unreadable configs are left out."""
    from training.tasks import list_tasks, load_task

    kinds = {}
    for name in list_tasks():
        try:
            kinds[name] = load_task(name).kind
        except SpectrascopeError:
            continue
    return kinds


def model_layers(model: str) -> int | None:
    """Transformer layers of a model (analysis.allocation_plan.layer_count): a folder's config.json is read each
    time (cheap, and never stale), anything else is opened once per model."""
    from analysis.allocation_plan import layer_count

    return layer_count(model) if (Path(model).expanduser() / "config.json").is_file() else _source_layers(model)


@st.cache_data(max_entries=16, show_spinner="Reading the model's layer count…")
def _source_layers(model: str) -> int | None:
    from analysis.allocation_plan import layer_count

    return layer_count(model)


def saved_allocations() -> tuple[list[tuple[str, str | None]], str | None]:
    """([(name, error or None)], name of the one chosen for training on the Allocate page)."""
    return [(s.name, s.error) for s in allocation_store.list_saved()], allocation_store.current_name()


def _has_ranks(name: str) -> bool:
    try:
        return bool((load_allocation(name).lora_config or {}).get("rank_pattern"))
    except SpectrascopeError:
        return False


def load_allocation(name: str):
    """A saved allocation (analysis.allocation.Allocation) by name; SpectrascopeError if unreadable."""
    return allocation_store.load(name)


# ---------------------------------------------------------------- the form

def model_picker(where) -> str:
    """Built-ins, the sidebar's model, or another folder; returns the model spec the trainer gets."""
    sidebar = common.view("model", DEFAULT_MODEL)
    options = list(common.BUILTINS) + ([sidebar] if sidebar not in common.BUILTINS else []) + [common.OTHER]
    key = _default("model", sidebar)
    if st.session_state[key] not in options:
        st.session_state[key] = sidebar
    choice = where.selectbox("Model", options, key=key, help="Defaults to the sidebar's model. The embedded "
                             "all-MiniLM-L6-v2 trains in minutes on CPU; SmolLM2 (a 135M decoder) is much slower.")
    if choice == common.OTHER:
        return where.text_input("Model folder", key=_default("model_path", ""), placeholder="/path/to/checkpoint",
                                help="A folder with config.json, weights and a tokenizer").strip()
    return choice


def allocation_section(method: str, model: str) -> tuple[dict | None, list[str]]:
    """The allocation picker (LoRA: rank_pattern, MoE-LoRA: experts + top-k per layer); (allocation dict, problems)."""
    problems: list[str] = []
    spec = registry.get(method)
    if spec.allocation is None:
        st.caption(f"{spec.label} takes no allocation: the same settings for every layer.")
        return None, problems
    experts = spec.allocation == "experts"
    saved, current = saved_allocations()
    names = [n for n, err in saved if err is None]
    broken = [(n, err) for n, err in saved if err is not None]
    key = _default(f"alloc_{method}", current if current in names and (experts or _has_ranks(current))
                   else NO_ALLOCATION)
    if st.session_state[key] not in [NO_ALLOCATION] + names:
        st.session_state[key] = NO_ALLOCATION
    c1, c2 = st.columns([1, 2])
    what = "experts and top-k per layer" if experts else "LoRA ranks per layer (rank_pattern)"
    pick = c1.selectbox("Allocation", [NO_ALLOCATION] + names, key=key, format_func=lambda n: n + " (current)" * (
        n == current), help=f"A saved allocation from the Allocate page gives the {what}; (current): the one its **Use "
        f"for training** chose. {NO_ALLOCATION}: the same settings for every layer.")
    for name, err in broken:
        c2.warning(f"Saved allocation **{name}** cannot be used: {err}", icon=":material/warning:")
    if pick == NO_ALLOCATION:
        if experts:
            a, b = c2.columns(2)
            a.number_input("Experts per layer", 1, 64, step=1, key=_default("experts", DEFAULTS.experts))
            b.number_input("Top-k (experts per token)", 1, 64, step=1, key=_default("top_k", DEFAULTS.top_k))
        else:
            c2.caption(f"Every adapted matrix gets rank {st.session_state.get(K + 'rank', DEFAULTS.rank)}. Save an "
                       "allocation with α-driven LoRA ranks on the Allocate page to vary the rank per layer.")
        if not names and not broken:
            c2.caption("No saved allocations yet: the Allocate page's **Use for training** saves one.")
        return None, problems
    try:
        alloc = load_allocation(pick)
    except SpectrascopeError as err:
        problems.append(f"Allocation **{pick}** cannot be read: {err}")
        return None, problems
    n_alloc = len(alloc.experts)
    with c2:
        st.caption(f"**{pick}** · strategy {alloc.strategy} · made for {alloc.model or 'an unnamed model'} · "
                   f"{n_alloc} layers")
        if experts:
            st.dataframe(pd.DataFrame([alloc.experts, alloc.top_k], index=["experts", "top-k"],
                                      columns=[f"L{i}" for i in range(n_alloc)]), width="stretch")
            st.caption(f"{alloc.total} experts in all; rank {st.session_state.get(K + 'rank', DEFAULTS.rank)} each.")
        elif alloc.lora_config and alloc.lora_config.get("rank_pattern"):
            pattern = alloc.lora_config["rank_pattern"]
            if alloc.ranks:
                st.dataframe(pd.DataFrame([alloc.ranks], index=["rank"], columns=[f"L{i}" for i in range(n_alloc)]),
                             width="stretch")
            with st.expander(f"rank_pattern ({len(pattern)} keys)"):
                st.json(alloc.lora_config, expanded=True)
        else:
            problems.append(f"Allocation **{pick}** has no LoRA ranks (rank_pattern): on the Allocate page turn on "
                            "the α-driven LoRA ranks and save it again, or pick MoE-LoRA.")
    try:
        layers = model_layers(model) if model else None
    except SpectrascopeError as err:
        problems.append(f"Cannot read model {model!r}: {err}")
        layers = None
    if layers is not None and layers != n_alloc:
        problems.append(f"Allocation **{pick}** has {n_alloc} layers but the model {model} has {layers}: make an "
                        "allocation for this model on the Allocate page (pick the model in the sidebar), or choose "
                        "another allocation.")
    return {**alloc.to_dict(), "name": pick}, problems


def method_option_inputs(spec) -> dict:
    """Inputs for the method's own options (its Method.options dataclass), in the More popover; the values that
    differ from the defaults."""
    from dataclasses import MISSING, fields

    if spec.options is None:
        return {}
    st.markdown(f"**{spec.label} options**")
    out = {}
    for f in fields(spec.options):
        default = f.default if f.default is not MISSING else None
        key, text = _default(f"opt_{spec.name}_{f.name}", default), f.metadata.get("help") if f.metadata else None
        label = f.name.replace("_", " ")
        if isinstance(default, bool):
            value = st.checkbox(label, key=key, help=text)
        elif isinstance(default, int):
            value = st.number_input(label, 0, 10**7, step=1, key=key, help=text)
        elif isinstance(default, float):
            value = st.number_input(label, 0.0, 1e6, key=key, format="%.4g", help=text)
        elif isinstance(default, str) and f.metadata.get("choices"):
            value = st.selectbox(label, list(f.metadata["choices"]), key=key, help=text)
        else:
            value = st.text_input(label, key=key, help=text) or None
        if value != default:
            out[f.name] = value
    return out


def backend_section() -> tuple[str, dict]:
    """Where the run runs: this machine, a Slurm job or a Ray job, with the backend's own options (empty fields
    are left to the cluster's defaults); the backend checks them at submit."""
    from training.backends import NAMES, OPTIONS

    labels = {"local": "this machine", "slurm": "Slurm cluster", "ray": "Ray cluster"}
    fields = {b: [o for o in OPTIONS if o[0] == b] for b in NAMES}
    cols = st.columns(1 + max(len(f) for f in fields.values()))
    backend = cols[0].selectbox("Runs on", NAMES, key=_default("backend", "local", options=list(NAMES)),
                                format_func=lambda b: labels.get(b, b),
                                help="this machine: the local queue; Slurm: one sbatch job per run (the cluster "
                                     "must see this code and the data directory at the same paths); Ray: one Ray "
                                     "job per run (docs/cluster.md)")
    options = {}
    for col, (_, key, _, label, kind, text) in zip(cols[1:], fields[backend]):
        if kind is int:
            value = col.number_input(label, 0, 10**4, None, step=1, key=_default(key, None, int), help=text,
                                     placeholder="cluster default")
        else:
            value = col.text_input(label, key=_default(key, ""), help=text, placeholder="cluster default"
                                   if key != "address" else "$RAY_ADDRESS").strip() or None
        if value is not None:
            options[key] = value
    return backend, options


def run_form(store: JobStore):
    """Model, task, method, hyperparameters, allocation, run name and Submit; the queued Job, or None."""
    st.session_state[FIELDS] = {}
    if st.session_state.pop(CLEAR_NAME, False):
        st.session_state[K + "name"] = ""
    kinds = task_kinds(str(data_dir()))
    tasks, generative = list(kinds) or [DEFAULTS.task], {t for t, kind in kinds.items() if kind != "classification"}
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    model = model_picker(c1)
    key = _default("task", DEFAULTS.task if DEFAULTS.task in tasks else tasks[0], options=tasks)
    task = c2.selectbox("Task", tasks, key=key, format_func=lambda t: t + " (decoder)" * (t in generative),
                        help="Built-in tasks and your own in <data>/tasks (see training/tasks/README.md); "
                             "(decoder): a generative task, for causal LMs only")
    method = c3.selectbox("Method", registry.names(), key=_default("method", DEFAULTS.method, options=registry.names()),
                          format_func=registry.label, help="\n".join(f"- **{m.label}**: {m.summary}"
                                                                     for m in registry.all_methods()))
    spec = registry.get(method)
    taken = store.names()
    name = c4.text_input("Run name", key=_default("name", ""), max_chars=64,
                         placeholder=default_name({"method": method, "task": task}, taken),
                         help="Letters, digits, '_', '.' or '-', not the name of an earlier run. Empty: the name "
                              "shown (<method>-<task>, numbered). The run folder is runs/<id>-<name> in the data "
                              "directory.").strip()
    bad_name = name_problem(name, taken) if name else None
    if bad_name:
        st.error(f"Run name: {bad_name}.", icon=":material/error:")

    h = st.columns(7)
    rank = h[0].number_input("Rank", 1, 512, step=1, key=_default("rank", DEFAULTS.rank), disabled="rank" not in spec.takes,
                             help="LoRA rank (per expert for MoE-LoRA)")
    lr = h[1].number_input("Learning rate", 1e-7, 0.5, None, step=1e-5, format="%.1e", key=_default("lr", None, float),
                           placeholder=f"{spec.default_lr:.0e}",
                           help=f"Empty: {spec.label}'s default, {spec.default_lr:g} (docs/methods_intruders.md)")
    epochs = h[2].number_input("Epochs", 1, 100, step=1, key=_default("epochs", DEFAULTS.epochs))
    max_steps = h[3].number_input("Max steps", 1, 10**7, None, step=10,
                                  key=_default("max_steps", DEFAULTS.max_steps, int),
                                  placeholder="epochs decide", help="Optimizer steps; overrides epochs when set")
    batch = h[4].number_input("Batch size", 1, 1024, step=1, key=_default("batch", DEFAULTS.batch_size))
    max_len = h[5].number_input("Max length", 8, 8192, step=8, key=_default("max_len", DEFAULTS.max_length),
                                help="Tokens per example (longer ones are cut)")
    seed = h[6].number_input("Seed", 0, 2**31 - 1, step=1, key=_default("seed", DEFAULTS.seed))
    r = st.columns(7, vertical_alignment="bottom")
    rows = {f: r[i].number_input(label, 1, 10**8, None, step=100, key=_default(f, getattr(DEFAULTS, f)),
                                 placeholder="all rows", help=f"Seeded subset of the {split} split; empty: all rows")
            for i, (f, label, split) in enumerate([("max_train_rows", "Train rows", "train"),
                                                   ("max_eval_rows", "Validation rows", "validation"),
                                                   ("max_test_rows", "Test rows", "test")])}
    eval_every = r[3].number_input("Validate every", 0, 10**6, step=10, key=_default("eval_every", DEFAULTS.eval_every),
                                   help="Steps between validation passes (0: only at the end)")
    with r[4].popover("More", icon=":material/tune:", width="stretch",
                     help="LoRA alpha, dropout, warm-up, weight decay, load balance, best pass, device, processes"):
        alpha = st.number_input("LoRA alpha", 0.0, 4096.0, None, key=_default("alpha", DEFAULTS.alpha, float),
                                placeholder="2 × rank", disabled="alpha" not in spec.takes)
        dropout = st.number_input("Dropout", 0.0, 0.9, step=0.05, key=_default("dropout", DEFAULTS.dropout))
        warmup = st.number_input("Warm-up ratio", 0.0, 0.99, step=0.05, key=_default("warmup", DEFAULTS.warmup_ratio))
        decay = st.number_input("Weight decay", 0.0, 1.0, step=0.01, key=_default("decay", DEFAULTS.weight_decay))
        balance = st.number_input("Load-balance coefficient (MoE-LoRA)", 0.0, 1.0, step=0.001, format="%.4f",
                                  key=_default("balance", DEFAULTS.load_balance_coef),
                                  disabled="load_balance_coef" not in spec.takes,
                                  help="Total loss = task loss + c · Σ over blocks of one Switch-style balance term "
                                       "per block (MoLA's formula, c = 0.001). 0 is the paper setting: the "
                                       "published MoLA / AlphaLoRA scripts train without it.")
        routing = st.selectbox("Routing (MoE-LoRA)", ROUTINGS,
                               key=_default("routing", DEFAULTS.routing, options=ROUTINGS),
                               disabled="routing" not in spec.takes,
                               help="token: every token picks its experts; prompt: the experts are picked once per "
                                    "sequence from the pooled prompt and reused for every generated token (MiLoRA)")
        own = method_option_inputs(spec)
        keep_best = st.checkbox("Keep the best validation pass", key=_default("keep_best", DEFAULTS.keep_best))
        device = st.selectbox("Device", common.DEVICES,
                              key=_default("device", DEFAULTS.device, options=common.DEVICES))
        gpus = gpu_count()
        if gpus:
            procs = st.number_input("GPUs per run", 1, gpus, key=_default("gpus", 1),
                                    help="More than one: data-parallel processes under torchrun, one per GPU")
        else:
            procs = st.number_input("Data-parallel processes", 1, max(1, os.cpu_count() or 1),
                                    key=_default("cpu_processes", DEFAULTS.cpu_processes),
                                    help="No GPU here: this many CPU processes (torchrun, gloo) share each batch")
        trust = st.checkbox("Trust remote code", key=_default("trust_remote_code", DEFAULTS.trust_remote_code),
                            help="Run the model folder's own Python code (config.json auto_map): only for code "
                                 "you trust. Recorded in the run's manifest.")
        lm_tasks = st.text_input("lm-eval tasks after training", key=_default("lm_eval_tasks", ""),
                                 placeholder="e.g. spectrascope_trec,spectrascope_hamlet",
                                 help="Causal LMs: score the finished run with lm-evaluation-harness on these tasks "
                                      "(comma-separated; shipped: spectrascope_rotten_tomatoes, spectrascope_trec, "
                                      "spectrascope_hamlet). Results go to Compare runs; a failed pass is a "
                                      "warning in the run's log, not a failed run (docs/lm_eval.md).").strip()
        lm_limit = st.number_input("lm-eval documents per task", 1, 10**7, None, step=100,
                                   key=_default("lm_eval_limit", DEFAULTS.lm_eval_limit, int),
                                   placeholder="all documents", help="The first N documents of each task")
    backend, backend_options = backend_section()
    st.markdown("**Allocation**")
    allocation, problems = allocation_section(method, model)
    if model:                              # config, architecture, weights, tokenizer: cached per folder state
        with st.spinner("Checking the model…"):
            problem = model_problem(None if model == DEFAULT_MODEL else model, bool(trust))
        problems[:0] = [f"This model cannot be used: {problem}"] if problem else []     # the line names it
    for problem in problems:
        st.error(problem, icon=":material/error:")
    remember_form()
    if not st.button("Submit", type="primary", icon=":material/play_arrow:", key=K + "submit"):
        return None
    if bad_name or problems or not model:
        st.error("Not submitted: " + ("enter a model folder." if not model else "fix the problems above."),
                 icon=":material/error:")
        return None
    ints = dict(seed=seed, epochs=epochs, max_steps=max_steps, batch_size=batch, max_length=max_len, rank=rank,
                eval_every=eval_every, **rows)
    config = {"method": method, "model": None if model == DEFAULT_MODEL else model, "task": task, "lr": lr,
              "warmup_ratio": float(warmup), "weight_decay": float(decay), "dropout": float(dropout), "alpha": alpha,
              "keep_best": bool(keep_best), "device": device, ("gpus" if gpus else "cpu_processes"): int(procs),
              "trust_remote_code": bool(trust),
              **{k: None if v is None else int(v) for k, v in ints.items()}}
    config["load_balance_coef"], config["routing"] = float(balance), routing
    if own:
        config["method_options"] = own
    if lm_tasks:                           # checked at submit: task names, a causal LM (training.lm_eval_harness)
        config["lm_eval_tasks"] = [t.strip() for t in lm_tasks.split(",") if t.strip()]
        config["lm_eval_limit"] = None if lm_limit is None else int(lm_limit)
    if "experts" in spec.takes:
        if allocation is None:
            config["experts"] = int(st.session_state.get(K + "experts", DEFAULTS.experts))
            config["top_k"] = int(st.session_state.get(K + "top_k", DEFAULTS.top_k))
    if allocation is not None:
        config["allocation"] = allocation
    config = registry.config_for(method, config)          # only the options this method takes
    try:
        with st.spinner("Checking the model, the task data and the options…"):
            job = store.submit(config, name=name or None, backend=backend, backend_options=backend_options)
    except SpectrascopeError as err:
        st.error(f"Not submitted: {err}", icon=":material/error:")
        return None
    forget_name()                          # the next run gets a fresh name, not this one again
    return job



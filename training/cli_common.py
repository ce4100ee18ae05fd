"""Helpers shared by the `python -m training` sub-commands: --set KEY=VALUE, --trust-remote-code, progress bars."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from analysis.cli_common import PlainProgress, is_terminal
from analysis.types import SpectrascopeError

TRUST_HELP = ("run the model folder's own Python code (config.json auto_map); only for code you trust; "
              "recorded in the run manifest")


def add_set_option(p, text: str) -> None:
    """The repeatable `--set KEY=VALUE` option (read with parse_set)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=text)


def add_trust_flag(p, text: str = TRUST_HELP) -> None:
    """The `--trust-remote-code` opt-in (off unless given)."""
    p.add_argument("--trust-remote-code", action="store_true", help=text)


def parse_set(items: list[str]) -> dict:
    """{key: value} of `--set KEY=VALUE` items; a value is parsed as JSON when it can be, else kept as text."""
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpectrascopeError(f"--set {item!r}: use KEY=VALUE, e.g. --set warmup_ratio=0.05")
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw
    return values


@contextmanager
def progress_bar(desc: str, stopped: str, out=None):
    """Progress of a wait loop on stderr (or `out`): a tqdm bar of steps in a terminal, otherwise plain lines
    (PlainProgress) instead of a redrawn bar per update. Ctrl-C ends the wait with the one line `stopped` (the
    work goes on in the background)."""
    out = out or sys.stderr
    if is_terminal(out):
        from tqdm import tqdm

        bar = tqdm(total=None, file=out, unit="step", desc=desc, dynamic_ncols=True)
    else:
        bar = PlainProgress(desc, out)
    try:
        yield bar
    except KeyboardInterrupt:
        raise SpectrascopeError(stopped) from None
    finally:
        bar.close()


def wait_for_job(store, job_id: int):
    """Block until job `job_id` ends, drawing its steps, loss and validation metrics; return the final Job."""
    with progress_bar(f"job {job_id}", f"stopped waiting; job {job_id} goes on "
                                        f"(python -m training cancel {job_id})") as bar:
        def show(job, lines):
            for line in lines:
                if "total_steps" in line:
                    bar.total = line["total_steps"]
                if "step" in line:
                    bar.n = line["step"]
                post = {"loss": f"{line['loss']:.4f}"} if "loss" in line else {}
                if "eval" in line:
                    post.update({k: f"{v:.4f}" for k, v in line["eval"].items() if isinstance(v, float)})
                bar.set_postfix(post, refresh=False)
            bar.set_description(f"job {job_id} {job.status}")
            bar.refresh()

        return store.wait(job_id, poll=0.5, on_progress=show)

"""Helpers shared by the command-line tools: one-line errors with exit code 2, closed pipes, progress, tables."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from analysis.types import SpectrascopeError

if TYPE_CHECKING:
    import pandas as pd


def guarded(fn: Callable[[], int]) -> int:
    """Run a CLI body: SpectrascopeError → one line on stderr and exit 2; other failures → one line, exit 1.

    Set SPECTRASCOPE_DEBUG=1 to see the traceback of an unexpected failure.
    """
    try:
        return fn()
    except SpectrascopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:      # the reader went away (`| head`): pipe_safe ends the command quietly
        raise
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a raw traceback
        if os.environ.get("SPECTRASCOPE_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (set SPECTRASCOPE_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


# The exit status of a command whose reader closed the pipe: 128 + SIGPIPE, what `cat` or `yes` report under
# `set -o pipefail`.
CLOSED_PIPE_STATUS = 141


def pipe_safe(main: Callable[[], int]) -> int:
    """Run a CLI's main(): when the reader of its output goes away early (`... | head`), end quietly.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError, and its last flush at exit prints
    "Exception ignored ... BrokenPipeError". Here stdout is flushed before returning; on a closed pipe stdout and
    stderr are pointed at /dev/null (nothing is left to say, and the exit flush then succeeds) and the status
    is CLOSED_PIPE_STATUS, with no output at all.
    """
    try:
        try:
            return main()
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):     # not a real file (a test's capture): nothing to do
                pass
        os.close(devnull)
        return CLOSED_PIPE_STATUS


# Outside a terminal (a pipe, a CI log) progress is one plain line at most this often, when it changed.
PLAIN_EVERY_S = 5.0


class PlainProgress:
    """A tqdm bar's stand-in outside a terminal: plain lines, e.g. "job 3 running: 40/63 steps (63%), loss 0.6931
    [12 s]", one at most every `every` seconds and only when the state changed, the final state always (on close).

    It takes the calls progress code makes on a bar: `total`, `n`, set_description, set_postfix(_str), refresh,
    close. `unit` names what is counted; `fmt` writes a count (e.g. bytes as MiB).
    """

    def __init__(self, desc: str, out, every: float = PLAIN_EVERY_S, clock=time.monotonic, unit: str = "steps",
                 fmt=str):
        self.desc, self.out, self.every, self.clock, self.unit, self.fmt = desc, out, every, clock, unit, fmt
        self.total, self.n, self.postfix = None, 0, {}
        self.start, self.last_text, self.last_time = clock(), None, None

    def set_description(self, desc: str, refresh: bool = False) -> None:
        self.desc = desc

    def set_postfix(self, values: dict, refresh: bool = False) -> None:
        self.postfix = dict(values)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = {"": text} if text else {}

    def text(self) -> str:
        """The state as one line (without the elapsed time, so an unchanged state prints nothing new)."""
        count = f"{self.fmt(self.n)} {self.unit}"
        if self.total:
            count = f"{self.fmt(self.n)}/{self.fmt(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
        return ", ".join([f"{self.desc}: {count}"] + [f"{k} {v}".strip() for k, v in self.postfix.items()])

    def refresh(self, final: bool = False) -> None:
        """Print the state when it changed and the last line is `every` seconds old (or `final`)."""
        now, text = self.clock(), self.text()
        if text == self.last_text or (not final and self.last_time is not None
                                      and now - self.last_time < self.every):
            return
        print(f"{text} [{now - self.start:.0f} s]", file=self.out, flush=True)
        self.last_text, self.last_time = text, now

    def close(self) -> None:
        self.refresh(final=True)


def is_terminal(out) -> bool:
    """Whether `out` is a terminal (a bar may redraw itself there; elsewhere it would repeat per update)."""
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):         # no isatty, or a closed file
        return False


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def tqdm_progress(desc: str, unit: str = "matrices", nbytes: bool = False):
    """A (callback, close) pair for callbacks f(done, total, name): a tqdm bar on stderr in a terminal, plain lines
    (PlainProgress) in a pipe or a log. `nbytes`: the counts are bytes (a download)."""
    bar = None

    def update(done: int, total: int, name: str = "") -> None:
        nonlocal bar
        if bar is None:
            if is_terminal(sys.stderr):
                from tqdm import tqdm

                bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                           **(dict(unit="B", unit_scale=True, unit_divisor=1024) if nbytes else dict(unit=unit)))
            else:
                bar = PlainProgress(desc, sys.stderr, unit="" if nbytes else unit, fmt=mib if nbytes else str)
        bar.total, bar.n = total, done
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def _cell(v) -> str:
    """A CSV / text cell: empty for None and NaN, shortest round-trip repr for floats (as pandas writes)."""
    if v is None:
        return ""
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        v = float(v)
        return "" if v != v else repr(v)
    return str(v)


def write_rows(rows: list[dict], columns: list[str], out: str | Path, extra: dict | None = None) -> None:
    """Write rows (dicts) as CSV or JSON by extension (JSON: {"rows": [...], **extra}), without pandas."""
    import csv
    import json
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SpectrascopeError(f"--out {out}: use a .csv or .json file name")
    if not out.parent.exists():
        raise SpectrascopeError(f"--out {out}: folder {out.parent} does not exist")
    if suffix == ".csv":
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([_cell(r.get(c)) for c in columns] for r in rows)
    else:
        from analysis.engine import json_rows
        picked = json_rows([{c: r.get(c) for c in columns} for r in rows])
        out.write_text(json.dumps({**(extra or {}), "rows": picked}, indent=1))


def write_table(df: "pd.DataFrame", out: str | Path, extra: dict | None = None) -> None:
    """Write a DataFrame as CSV or JSON by extension (see write_rows)."""
    write_rows(df.to_dict(orient="records"), [str(c) for c in df.columns], out, extra)


def format_table(rows: list[dict], columns: list[str], digits: int = 4) -> str:
    """A plain fixed-width text table (floats to `digits` significant figures, right-aligned)."""
    def fmt(v) -> str:
        if isinstance(v, float) or type(v).__name__.startswith("float"):
            return "NaN" if v != v else f"{float(v):.{digits}g}"
        return "" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)

"""Helpers shared by the command-line tools: one-line errors with exit code 2, progress bars, table output."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis.types import SpectrascopeError


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
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a raw traceback
        if os.environ.get("SPECTRASCOPE_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (set SPECTRASCOPE_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


def tqdm_progress(desc: str):
    """A (callback, close) pair drawing a tqdm bar on stderr for callbacks of the form f(done, total, name)."""
    from tqdm import tqdm
    bar = None

    def update(done: int, total: int, name: str = "") -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="matrix", file=sys.stderr, leave=False,
                       disable=None if sys.stderr.isatty() else False)
        bar.n = done
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.refresh()

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def write_table(df: pd.DataFrame, out: str | Path, extra: dict | None = None) -> None:
    """Write a table as CSV or JSON by extension (JSON: {"rows": [...], **extra})."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SpectrascopeError(f"--out {out}: use a .csv or .json file name")
    if not out.parent.exists():
        raise SpectrascopeError(f"--out {out}: folder {out.parent} does not exist")
    if suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        import json
        rows = json.loads(df.to_json(orient="records"))
        out.write_text(json.dumps({**(extra or {}), "rows": rows}, indent=1))

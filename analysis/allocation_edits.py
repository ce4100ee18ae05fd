"""Hand edits of an allocation's experts per layer: read, merged with a table's edits, and written as `0:7,3:2` text."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from analysis.types import SpectrascopeError

Value = float | None            # what a table cell holds: a number as typed, or None when emptied
PAIR = re.compile(r"\s*(\d+)\s*:\s*(\S*)\s*")
SHOWN_BAD = 8                   # bad layers named in one error


def cell(value: Any) -> Value:
    """A table cell as a number or None (empty, NaN); ValueError for text that is no number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(repr(value))
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    x = float(value)
    return None if math.isnan(x) else x


def read_counts(values: Sequence[Any]) -> list[int]:
    """Expert counts typed into the table: whole numbers ≥ 0, else one SpectrascopeError naming every bad layer."""
    bad, counts = [], []
    for layer, v in enumerate(values):
        try:
            x = cell(v)
        except (TypeError, ValueError):
            bad.append(f"layer {layer}: {v!r}")
            continue
        if x is None:
            bad.append(f"layer {layer}: empty")
        elif not math.isfinite(x) or x < 0 or not x.is_integer():
            bad.append(f"layer {layer}: {x:g}")
        else:
            counts.append(int(x))
    if bad:
        more = f" (and {len(bad) - SHOWN_BAD} more)" if len(bad) > SHOWN_BAD else ""
        raise SpectrascopeError("expert counts must be whole numbers ≥ 0 — fix " + "; ".join(bad[:SHOWN_BAD])
                                + more + ".")
    return counts


def edited_cells(edited_rows: Mapping | None, column: str) -> dict[int, Value]:
    """The cells of `column` in a table editor's edited_rows ({row: {column: value}}, rows as int or str, as
    Streamlit's data_editor reports them); other columns are ignored, unreadable text becomes None (empty)."""
    out: dict[int, Value] = {}
    for row, change in (edited_rows or {}).items():
        if not isinstance(change, Mapping) or column not in change:
            continue
        try:
            value = cell(change[column])
        except (TypeError, ValueError):
            value = None
        out[int(row)] = value
    return out


def _same(value: Value, count: int) -> bool:
    return value is not None and value == count


def merge_edits(edits: Mapping[int, Value], changed: Mapping[int, Value], base: Sequence[int]) -> dict[int, Value]:
    """`edits` with the `changed` cells applied; a layer set back to the base's count is no hand edit any more,
    layers outside the base are dropped. Sorted by layer."""
    out = dict(edits)
    out.update(changed)
    return {layer: value for layer, value in sorted(out.items())
            if 0 <= layer < len(base) and not _same(value, base[layer])}


def apply_edits(base: Sequence[int], edits: Mapping[int, Value]) -> list[Value]:
    """The table's column: the base counts with the hand edits in place (as numbers, None where emptied)."""
    return [edits[layer] if layer in edits else float(count) for layer, count in enumerate(base)]


def _text(value: Value) -> str:
    if value is None:
        return ""
    return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)


def format_edits(edits: Mapping[int, Value]) -> str | None:
    """Hand edits as URL text, `layer:count` pairs by layer ("0:7,3:2.5,4:" — an emptied cell has no count), or
    None when there are none."""
    return ",".join(f"{layer}:{_text(value)}" for layer, value in sorted(edits.items())) or None


def parse_edits(text: str | None, n_layers: int) -> dict[int, Value]:
    """format_edits' text back as {layer: value}; SpectrascopeError when it is malformed or names a layer the model
    does not have."""
    out: dict[int, Value] = {}
    if text is None or not text.strip():
        return out
    for part in text.split(","):
        hit = PAIR.fullmatch(part)
        try:
            value = cell(hit.group(2)) if hit else None
        except ValueError:
            hit = None
        if hit is None:
            raise SpectrascopeError(f"hand edit {part.strip()!r} is not layer:count; write pairs such as 0:7,3:2.")
        layer = int(hit.group(1))
        if layer >= n_layers:
            raise SpectrascopeError(f"hand edit {part.strip()!r} names layer {layer}, but the model has layers "
                                    f"0–{n_layers - 1}.")
        if layer in out:
            raise SpectrascopeError(f"hand edits name layer {layer} twice; give one count per layer.")
        out[layer] = value
    return out

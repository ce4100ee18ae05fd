"""Tests for analysis.allocation_edits: reading typed counts, merging a table's edits, the `0:7,3:2` URL text."""
from __future__ import annotations

import math

import pytest

from analysis import allocation_edits as ed
from analysis.types import SpectrascopeError


@pytest.mark.parametrize("value, number", [(None, None), ("", None), ("  ", None), (float("nan"), None), (7, 7.0),
                                           ("7", 7.0), (" 2.5 ", 2.5), (-1, -1.0), ("inf", math.inf)])
def test_cell(value, number):
    assert ed.cell(value) == number


@pytest.mark.parametrize("value", ["abc", True, "1,5"])
def test_cell_refuses_what_is_no_number(value):
    with pytest.raises(ValueError):
        ed.cell(value)


def test_read_counts():
    assert ed.read_counts([1.0, 2, 0, "3"]) == [1, 2, 0, 3]
    with pytest.raises(SpectrascopeError, match=r"layer 1: -1.*layer 2: 1.5.*layer 3: empty.*layer 4: 'x'"):
        ed.read_counts([1, -1, 1.5, float("nan"), "x"])
    with pytest.raises(SpectrascopeError, match=r"layer 0: inf"):
        ed.read_counts([math.inf])
    with pytest.raises(SpectrascopeError) as err:
        ed.read_counts([-1] * 10)
    assert "layer 7: -1" in str(err.value) and "layer 8" not in str(err.value) and "(and 2 more)" in str(err.value)


def test_edited_cells_reads_the_experts_column_of_a_tables_edits():
    rows = {"2": {"experts": 1}, 3: {"α score": 5.0}, 4: {"experts": None}, 5: {"experts": "abc"}, 6: "junk"}
    assert ed.edited_cells(rows, "experts") == {2: 1.0, 4: None, 5: None}
    assert ed.edited_cells(None, "experts") == {} and ed.edited_cells({}, "experts") == {}


def test_merge_edits():
    base = [3, 5, 6, 5]
    # layer 1 typed back to its count is no edit; layer 7 is not in the model; layer 0's earlier edit stays
    assert ed.merge_edits({0: 9.0}, {1: 5.0, 3: 2.5, 7: 1.0}, base) == {0: 9.0, 3: 2.5}
    assert ed.merge_edits({0: 9.0, 2: 1.0}, {0: 3.0, 2: None}, base) == {2: None}     # back to the base; emptied
    assert list(ed.merge_edits({3: 1.0}, {0: 1.0}, base)) == [0, 3]                 # by layer


def test_apply_edits():
    assert ed.apply_edits([3, 5, 6], {1: None, 2: 9.0}) == [3.0, None, 9.0]
    assert ed.apply_edits([3, 5], {}) == [3.0, 5.0]


def test_format_edits():
    assert ed.format_edits({3: 2.5, 0: 9.0, 4: None, 1: -1.0}) == "0:9,1:-1,3:2.5,4:"
    assert ed.format_edits({}) is None


@pytest.mark.parametrize("text, edits", [
    ("0:9,1:-1,3:2.5,4:", {0: 9.0, 1: -1.0, 3: 2.5, 4: None}),
    (" 0 : 7 , 5:0 ", {0: 7.0, 5: 0.0}),
    ("", {}),
    (None, {}),
])
def test_parse_edits(text, edits):
    assert ed.parse_edits(text, 6) == edits


def test_parse_and_format_round_trip():
    edits = {0: 12.0, 2: None, 5: 0.5}
    assert ed.parse_edits(ed.format_edits(edits), 6) == edits


@pytest.mark.parametrize("text, said", [
    ("0:7,x", "hand edit 'x' is not layer:count"),
    ("0:abc", "hand edit '0:abc' is not layer:count"),
    ("-1:3", "hand edit '-1:3' is not layer:count"),
    ("6:1", "names layer 6, but the model has layers 0–5"),
    ("1:2,1:3", "name layer 1 twice"),
])
def test_parse_edits_refuses_malformed_text(text, said):
    with pytest.raises(SpectrascopeError, match=said):
        ed.parse_edits(text, 6)

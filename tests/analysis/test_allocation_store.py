"""Tests for analysis.allocation_store: save/load/list of named allocations and the current.json hand-off."""
from __future__ import annotations

import json

import pytest

from analysis import allocation as al
from analysis import allocation_store as store
from analysis.types import SpectrascopeError


def _alloc(strategy="alphalora", budget=12):
    return al.allocate(strategy, scores=[3.0, 2.0, 4.0, 2.5], budget=budget, model="tiny")


def test_save_load_roundtrip_and_current(tmp_path):
    alloc = _alloc()
    path = store.save(alloc, "alpha-T12", root=tmp_path)
    assert path == tmp_path / "allocations" / "alpha-T12.json"
    loaded = store.load("alpha-T12", root=tmp_path)
    assert loaded.experts == alloc.experts and loaded.strategy == "alphalora" and loaded.model == "tiny"
    assert al.from_json(path.read_text()).total == 12
    # current.json is a valid allocation file on its own, carrying the chosen name
    current = store.load_current(root=tmp_path)
    assert current is not None and current.experts == alloc.experts
    assert store.current_name(root=tmp_path) == "alpha-T12"
    assert json.loads(store.current_path(root=tmp_path).read_text())["name"] == "alpha-T12"


def test_save_without_make_current_keeps_the_old_choice(tmp_path):
    store.save(_alloc(), "first", root=tmp_path)
    store.save(_alloc("uniform"), "second", root=tmp_path, make_current=False)
    assert store.current_name(root=tmp_path) == "first"
    assert store.load("second.json", root=tmp_path).strategy == "uniform"     # a trailing .json is accepted


def test_no_current_yet(tmp_path):
    assert store.load_current(root=tmp_path) is None
    assert store.current_name(root=tmp_path) is None
    assert store.current_path(root=tmp_path) is None
    assert store.list_saved(root=tmp_path) == []


@pytest.mark.parametrize("name", ["", "  ", "../evil", "a/b", "..", "a..b", ".hidden", "with space", "x" * 81,
                                  "current", "CURRENT", "naïve", "a\\b", "-dash"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(SpectrascopeError, match="name|reserved"):
        store.save(_alloc(), name, root=tmp_path)
    assert not any(p.name != "allocations" for p in tmp_path.iterdir())
    assert list((tmp_path / "allocations").iterdir()) == []


def test_bad_name_type():
    with pytest.raises(SpectrascopeError, match="must be text"):
        store.check_name(None)


def test_safe_name():
    assert store.safe_name("org/model name") == "org-model-name"
    assert store.safe_name("../../etc/passwd") == "etc-passwd"
    assert store.safe_name("///") == "allocation"
    assert store.safe_name("current") == "allocation"
    for text in ("a" * 200, "mola:2468", "all-MiniLM-L6-v2 + adapter /x/y"):
        store.check_name(store.safe_name(text))


def test_load_missing_names_saved(tmp_path):
    store.save(_alloc(), "kept", root=tmp_path)
    with pytest.raises(SpectrascopeError, match="no saved allocation named 'gone'.*kept"):
        store.load("gone", root=tmp_path)


def test_invalid_file_is_reported_not_hidden(tmp_path):
    folder = store.store_dir(tmp_path)
    (folder / "broken.json").write_text('{"schema": "spectrascope.allocation/1", "experts": [1, -2]}')
    (folder / "notjson.json").write_text("{")
    store.save(_alloc(), "good", root=tmp_path)
    listed = {s.name: s for s in store.list_saved(root=tmp_path)}
    assert set(listed) == {"broken", "notjson", "good"}
    assert listed["good"].error is None and listed["good"].current and listed["good"].total == 12
    assert listed["good"].n_layers == 4 and listed["good"].strategy == "alphalora"
    assert "broken.json" in listed["broken"].error and "whole numbers" in listed["broken"].error
    assert "not valid JSON" in listed["notjson"].error
    with pytest.raises(SpectrascopeError, match="broken.json"):
        store.load("broken", root=tmp_path)


def test_save_refuses_an_invalid_allocation(tmp_path):
    bad = al.Allocation("alphalora", [1, 2], [1, 5])          # top_k above the expert count
    with pytest.raises(SpectrascopeError, match="top_k"):
        store.save(bad, "bad", root=tmp_path)
    assert not (tmp_path / "allocations" / "bad.json").exists()


def test_overwrite_and_rank_patterns_survive(tmp_path):
    alloc = _alloc()
    al.add_rank_allocation(alloc, 16)
    store.save(alloc, "ranked", root=tmp_path)
    store.save(_alloc(budget=8), "ranked", root=tmp_path, make_current=False)   # overwrite
    assert store.load("ranked", root=tmp_path).total == 8
    current = store.load_current(root=tmp_path)                                 # still the first save
    assert current.ranks is not None and sum(current.ranks) == 16
    assert current.lora_config["rank_pattern"]
    assert not list((tmp_path / "allocations").glob("*.tmp"))


def test_default_root_is_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path / "data"))
    path = store.save(_alloc(), "default-root")
    assert path == (tmp_path / "data" / "allocations" / "default-root.json").resolve()
    assert store.load_current().total == 12

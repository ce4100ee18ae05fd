"""Links into the app: values a page cannot show are said above it (once), unknown paths, and the shared helpers."""
from __future__ import annotations

import threading

from app import common

MINILM_LAYERS = 6


def link_warnings(at) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith(("The link asks", "There is no page"))]


def test_a_links_missing_layer_and_matrix_are_said_and_the_nearest_shown(app):
    at = app(layer=99, matrix="nonsense").run()
    assert not link_warnings(at)                                      # the Overview shows no layer: nothing to say
    at.switch_page("page_layer.py").run()
    assert not at.exception
    assert at.selectbox(key="w_layer").value == MINILM_LAYERS - 1
    assert at.selectbox(key="w_matrix").value == "all"
    assert link_warnings(at) == [
        "The link asks for **layer=99**, which is not a layer of this model (it has layers 0–5): showing **layer 5** "
        "instead.",
        "The link asks for **matrix=nonsense**, which is not one of the matrix choices here: showing **all matrices "
        "of this layer** instead."]
    assert str(at.query_params["layer"]).strip("[]'") == "5"          # the URL now says what is shown
    at.selectbox(key="w_fit").select("hill").run()
    assert not link_warnings(at)                                      # said once


def test_a_links_unreadable_layer_and_unknown_choices_are_said(app):
    at = app(score="nonsense", device="tpu").run()
    said = link_warnings(at)
    assert any("**score=nonsense**" in s and "per-layer score choices" in s for s in said), said
    assert any("**device=tpu**" in s and "showing **auto**" in s for s in said), said
    at = app(layer="abc").run()
    at.switch_page("page_layer.py").run()
    assert at.selectbox(key="w_layer").value == 0
    assert any("**layer=abc**" in s and "showing **layer 0**" in s for s in link_warnings(at))


def test_valid_links_and_later_changes_say_nothing(app):
    at = app(layer=2, matrix="encoder.layer.2.attention.self.query.weight", fit="hill").run()
    at.switch_page("page_layer.py").run()
    assert at.selectbox(key="w_matrix").value == "encoder.layer.2.attention.self.query.weight"
    assert not link_warnings(at)
    at.selectbox(key="w_layer").select(3).run()                      # that matrix is not in layer 3: no news
    assert at.selectbox(key="w_matrix").value == "all" and not link_warnings(at)


def test_unknown_path():
    known = ["overview", "layer", "train"]
    assert common.unknown_path("http://127.0.0.1:8501/doesnotexist", known) == "doesnotexist"
    assert common.unknown_path("http://127.0.0.1:8501/doesnotexist/", known) == "doesnotexist"
    assert common.unknown_path("http://127.0.0.1:8501/", known) is None
    assert common.unknown_path("http://127.0.0.1:8501", known) is None
    assert common.unknown_path("http://127.0.0.1:8501/layer", known) is None
    assert common.unknown_path(None, known) is None
    assert common.unknown_path("http://host/app/nope", known, base="app") == "nope"
    assert common.unknown_path("http://host/app/train", known, base="/app/") is None
    assert common.unknown_path("http://host/app", known, base="app") is None


def test_lru_memo_keeps_the_most_recently_used():
    memo = common.LRUMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1                                          # "a" is now the most recently used
    memo.put("c", 3)
    assert (memo.get("b"), memo.get("a"), memo.get("c"), len(memo)) == (None, 1, 3, 2)
    memo.pop("a")
    assert memo.get("a", "gone") == "gone"
    calls = []
    assert memo.get_or_compute("d", lambda: calls.append(1) or 4) == 4
    assert memo.get_or_compute("d", lambda: calls.append(1) or 5) == 4 and calls == [1]

    def hammer(i: int) -> None:
        for j in range(200):
            memo.put((i, j), j)
            memo.get((i, j - 1))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memo) == 2

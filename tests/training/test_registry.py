"""The method registry: every method is one folder; nothing outside it branches on a method's name."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from analysis.types import SpectrascopeError
from training import registry
from training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("analysis", "app", "training")


def _method_names_in(node) -> list[str]:
    """The registered method names a literal holds (a string, or a tuple / list / set of strings)."""
    names = set(registry.names())
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for e in node.elts for n in _method_names_in(e)]
    return []


def branches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, method name) of every comparison against a method name and every dict keyed by method names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                found += [(node.lineno, n) for n in _method_names_in(side)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, n) for k in node.keys if k is not None for n in _method_names_in(k)]
        elif isinstance(node, ast.Match):
            for case in node.cases:
                found += [(case.pattern.lineno, n) for n in _method_names_in(getattr(case.pattern, "value", None))]
    return found


def test_the_scan_finds_planted_branches():
    planted = ('if cfg.method == "lora":\n    pass\nx = m in ("full", "other")\n'
               'T = {"moe_lora": 1}\ny = "lora" if a else b\n')
    assert branches(ast.parse(planted)) == [(1, "lora"), (3, "full"), (4, "moe_lora")]


def test_no_method_name_is_a_branch_outside_its_folder():
    folders = {ROOT / "training" / name for name in registry.FOLDERS}
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(folder in path.parents for folder in folders):
                continue
            for line, name in branches(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line} branches on {name!r}")
    assert not offenders, "method knowledge belongs in training/<method>/method.py:\n" + "\n".join(offenders)


def test_every_folder_registers_one_method_with_what_callers_need():
    methods = registry.all_methods()
    assert [m.name for m in methods] == registry.names()
    assert {"lora", "moe_lora", "full"} <= set(registry.names())
    for m in methods:
        assert m.label and m.summary and 0 < m.default_lr < 1 and m.artifact_dir
        assert callable(m.attach) and callable(m.save) and callable(m.load)
        assert m.weights in ("adapter", "model", "moe", "merged")
        assert set(m.takes) <= set(registry.METHOD_FIELDS)
        for arm in m.arms:
            assert arm.method == m.name
    arms = registry.study_arms()
    assert all(a.reference is None or a.reference in arms for a in arms.values())


def test_unknown_method_and_foreign_options_are_one_clear_line():
    with pytest.raises(SpectrascopeError, match="unknown method 'qlora': use one of lora"):
        TrainConfig.from_dict({"method": "qlora"})
    with pytest.raises(SpectrascopeError, match="method full does not take option 'rank'"):
        TrainConfig.from_dict({"method": "full", "rank": 16})
    with pytest.raises(SpectrascopeError, match="method lora does not take option 'experts'.*moe_lora"):
        TrainConfig.from_dict({"method": "lora", "experts": 6})
    TrainConfig.from_dict({"method": "full", "rank": 8})             # the default value: nothing was asked
    with pytest.raises(SpectrascopeError, match="unknown training option"):
        TrainConfig.from_dict({"method": "lora", "no_such": 1})


def test_config_for_drops_only_what_the_method_does_not_take():
    shared = {"rank": 16, "experts": 6, "lr": 1e-3, "seed": 2}
    assert registry.config_for("full", shared) == {"lr": 1e-3, "seed": 2, "method": "full"}
    assert registry.config_for("lora", shared) == {"rank": 16, "lr": 1e-3, "seed": 2, "method": "lora"}
    assert registry.config_for("moe_lora", shared)["experts"] == 6


def test_method_options_are_validated_by_the_method(monkeypatch):
    @dataclass
    class Own:
        target_r: int = 4

    lora = registry.get("lora")
    monkeypatch.setitem(registry._load(), "lora", registry.Method(**{**lora.__dict__, "options": Own}))
    cfg = TrainConfig.from_dict({"method": "lora", "target_r": 2})          # --set target_r=2 lands in its options
    assert cfg.method_options == {"target_r": 2} and cfg.options == Own(2)
    with pytest.raises(SpectrascopeError, match="method lora has no option"):
        TrainConfig.from_dict({"method": "lora", "method_options": {"init_r": 3}})
    with pytest.raises(SpectrascopeError, match="takes no method_options"):
        TrainConfig.from_dict({"method": "full", "method_options": {"x": 1}})


def test_reading_the_registry_loads_no_torch():
    """Method folders export lazily (training.lazy): listing methods, labels and arms imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from training import registry; registry.names(); registry.study_arms(); "
            "print('torch' in sys.modules); import training.lora as lora; lora.LoraOptions; "
            "print(sorted(lora.__all__) == lora.__all__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]

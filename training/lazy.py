"""Lazy package exports: a method folder's names are imported on first use, so reading the registry loads no torch."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(__all__, __getattr__) for `package`: name -> the submodule (relative to the package) that defines it."""
    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), getattr_

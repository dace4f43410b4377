"""The registry of methods: one folder per method, each registering a ``base.Method`` here by name.

``get(name)`` finds one; ``names()`` lists them. A method added later registers in ``_FOLDERS`` and gets
the shared pipeline and the contract test (Testing/methods/test_contract.py) with it.
"""

from __future__ import annotations

import importlib

from ..core.errors import MAEAnomalyError
from .base import Method, SliceScores

DEFAULT_METHOD = "mae_classifier"
# each folder's ``method.METHOD``, or ``method.METHODS`` where one folder holds a method and its ablation
_FOLDERS = ("mae_classifier", "intensity", "ra", "maediff")
_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"a method named {method.name} is registered already")
    _REGISTRY[method.name] = method
    return method


def _load() -> None:
    for folder in _FOLDERS:
        if folder not in _REGISTRY:
            module = importlib.import_module(f"{__name__}.{folder}.method")
            for method in getattr(module, "METHODS", None) or (module.METHOD,):
                register(method)


def names() -> list[str]:
    _load()
    return list(_REGISTRY)


def get(name: str) -> Method:
    """The registered method ``name``; a one-line error naming the registered ones otherwise."""
    _load()
    if name not in _REGISTRY:
        raise MAEAnomalyError(f"unknown method '{name}' (registered: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


__all__ = ["DEFAULT_METHOD", "Method", "SliceScores", "get", "names", "register"]

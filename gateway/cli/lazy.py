"""Modules loaded on first use, so `pgw --help` and commands that never touch gRPC do not pay for them (and an
installation without the gateway's dependencies can still print its help)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule(ModuleType):
    """Stands for a module until one of its attributes is read; then imports it and takes over its names."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, imported when one of its attributes is first read (nothing is looked up before).

    Declare it for the type checker under ``if TYPE_CHECKING`` with a plain import of the same name."""
    return _LazyModule(name)

"""Modules loaded on first use, so `pgw --help` and commands that never touch gRPC do not pay for it."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_module"]


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, executed only when one of its attributes is first read (``importlib.util.LazyLoader``).

    Declare it for the type checker under ``if TYPE_CHECKING`` with a plain import of the same name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module

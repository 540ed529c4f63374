"""Lazy public names for a package (PEP 562): a name's module is imported on first use."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public names live in ``exports``
    (name -> module; a name whose module is the subpackage ``package.name`` is that subpackage).
    A loaded name is cached in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module = importlib.import_module(exports[name])
            value = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


class LazyModule:
    """A module imported on first attribute access: ``torch = LazyModule("torch")`` at the top of a module
    lets ``torch.linalg...`` in its functions work unchanged while importing the module costs nothing
    until one of them runs (``import torch`` takes ~0.8 s, most of a CPU-only ``hf-spectral analyze``'s
    start-up; the numpy backend never needs it). Nothing is put in ``sys.modules`` before the real import,
    so other libraries' ``"torch" in sys.modules`` checks stay true to what was imported."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._name in sys.modules else ''}>"


def is_tensor(value: Any) -> bool:
    """``isinstance(value, torch.Tensor)`` without importing torch (nothing is a tensor before it is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)

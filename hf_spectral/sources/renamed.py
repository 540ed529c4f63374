"""A reader that shows another reader's tensors under other names (a head model's ``bert.`` prefix
stripped so that its matrices line up with the base model's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hf_spectral._lazy import LazyModule
from hf_spectral.sources.types import ReaderContext, TensorReader
from hf_spectral.tensor_info import TensorInfo

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


class RenamedReader(ReaderContext):
    """``inner``'s tensors named ``rename(name)``; reading and closing go to ``inner``."""

    def __init__(self, inner: TensorReader, rename: Callable[[str], str]) -> None:
        self.inner = inner
        self.files: list[Path] = list(inner.files)
        self.shares_storage = getattr(inner, "shares_storage", False)
        self._infos: list[TensorInfo] = []
        self._original: dict[str, str] = {}
        for info in inner.tensors():
            new = rename(info.name)
            self._original[new] = info.name
            self._infos.append(TensorInfo(new, info.shape, info.dtype))

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        return self.inner.read(self._original.get(name, name))

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"RenamedReader({self.inner!r})"

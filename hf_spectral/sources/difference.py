"""A reader of W_A − W_B: the difference of two models, read tensor by tensor like any checkpoint, so
that its spectrum goes through the one SVD path (the engine)."""

from __future__ import annotations

from pathlib import Path

import torch

from hf_spectral.errors import SpectralError
from hf_spectral.sources.composed import composed_reader
from hf_spectral.sources.types import Checkpoint, ModelPart, ReaderContext, TensorReader
from hf_spectral.tensor_info import TensorInfo


class DifferenceReader(ReaderContext):
    """Reads ``a.read(name) − b.read(name)`` for every float tensor both readers hold with the same shape.

    The subtraction is done in float32 (float64 when either side is float64 or ``dtype`` asks for it):
    two float32 weights within a factor 2 of each other subtract exactly (Sterbenz), so a fine-tune's
    small change is not lost to rounding. Tensors held by one side only, or with different shapes,
    are left out (the caller reports them). The two readers belong to their checkpoints: ``close``
    releases nothing.
    """

    def __init__(self, a: TensorReader, b: TensorReader, *, dtype: torch.dtype = torch.float32) -> None:
        self.a, self.b = a, b
        self.files: list[Path] = [*a.files, *b.files]
        theirs = {t.name: t for t in b.tensors()}
        self._infos: list[TensorInfo] = []
        for mine in a.tensors():
            other = theirs.get(mine.name)
            if other is None or not mine.is_float or not other.is_float or mine.shape != other.shape:
                continue
            wide = dtype == torch.float64 or "F64" in (mine.dtype, other.dtype)
            self._infos.append(TensorInfo(mine.name, mine.shape, "F64" if wide else "F32"))
        self._wide = {t.name for t in self._infos if t.dtype == "F64"}

    def tensors(self) -> list[TensorInfo]:
        """The tensors of the difference, in ``a``'s order (headers only: nothing is read)."""
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        """W_A − W_B for tensor ``name`` (computed on each read; nothing is held)."""
        dtype = torch.float64 if name in self._wide else torch.float32
        return self.a.read(name).to(dtype) - self.b.read(name).to(dtype)

    def close(self) -> None:
        """Nothing to release: the two readers are closed with their own checkpoints."""

    def __repr__(self) -> str:
        return f"DifferenceReader({self.a!r} − {self.b!r}, {len(self._infos)} tensors)"


def difference_checkpoint(a: Checkpoint, b: Checkpoint, *, dtype: torch.dtype = torch.float32) -> Checkpoint:
    """A checkpoint whose tensors read as W_A − W_B, one part per component both hold (A's configs).

    Composed weights (pruned ``orig·mask``, weight norm ``g·v/‖v‖``) are composed on each side first
    — the difference of the parts is not the difference of the weights — so a pruned model compares
    with its dense original by the weight's name.
    """
    theirs = {part.component: part for part in b.parts}
    parts = []
    for part in a.parts:
        other = theirs.get(part.component)
        if other is None:
            continue
        reader = DifferenceReader(composed_reader(part), composed_reader(other), dtype=dtype)
        parts.append(ModelPart(part.component, reader, part.config))
    if not parts:
        raise SpectralError(f"{a.source} and {b.source} share no model component; compare models of the same kind")
    return Checkpoint(label=f"{a.label} - {b.label}", path=a.path, parts=parts, source=f"{a.source} - {b.source}",
                      meta={"difference_of": [str(a.path), str(b.path)]})

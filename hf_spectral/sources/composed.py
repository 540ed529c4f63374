"""A reader presenting composed weights (pruned ``orig·mask``, weight norm ``g·v/‖v‖``, parametrizations)
as the one tensor each stands for, so that two models compare by the weight's name."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

from hf_spectral._lazy import LazyModule
from hf_spectral.sources.types import ModelPart, ReaderContext, TensorReader
from hf_spectral.tensor_info import TensorInfo
from hf_spectral.views import build_matrix, plan_matrices
from hf_spectral.views.modules import composed_name
from hf_spectral.views.types import MatrixSpec

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


class ComposedReader(ReaderContext):
    """A reader presenting each composed weight as the one tensor ``X.weight`` it stands for (its
    stored parts hidden), every other tensor as stored."""

    def __init__(self, reader: TensorReader, composed: Sequence[MatrixSpec]) -> None:
        self.reader = reader
        self.files = reader.files
        self._built: dict[str, MatrixSpec] = {spec.name: spec for spec in composed}
        infos: list[TensorInfo] = []
        for info in reader.tensors():
            base = composed_name(info.name)
            if base is None:
                infos.append(info)
            elif base in self._built and info.name == self._built[base].tensors[0]:
                spec = self._built[base]
                infos.append(TensorInfo(spec.name, tuple(spec.tensor_shape), spec.dtype))
            # other parts (and halves of weights that cannot be composed) are hidden
        self._infos = infos

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        spec = self._built.get(name)
        if spec is None:
            return self.reader.read(name)
        # build_matrix composes then reshapes to ``shape``: asking for the stored shape, with no
        # transposition, gives the composed weight as it would be stored.
        stored = dataclasses.replace(spec, kind="matrix", shape=tuple(spec.tensor_shape), transposed=False)
        return build_matrix(stored, self.reader.read)

    def close(self) -> None:
        """Nothing to release: the wrapped reader is closed with its checkpoint."""


def composed_reader(part: ModelPart) -> TensorReader:
    """``part``'s reader, wrapped in a ``ComposedReader`` when it stores composed weights."""
    infos = part.reader.tensors()
    if not any(composed_name(t.name) for t in infos):
        return part.reader
    specs, _ = plan_matrices(infos, config=part.config)
    return ComposedReader(part.reader, [s for s in specs if s.composed])

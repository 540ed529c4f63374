"""What the sources layer hands to the engine: checkpoints made of lazily readable parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hf_spectral._lazy import LazyModule
from hf_spectral.tensor_info import TensorInfo

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


class TensorReader(Protocol):
    """Reads the tensors of one model (one or more weight files) lazily, one tensor at a time.

    ``tensors()`` comes from file headers only (no tensor data is read). ``read(name)`` returns
    one tensor on the CPU, zero-copy where the format allows (safetensors mmap, torch mmap).
    Readers are context managers; ``close()`` releases open file handles. A reader whose format can
    store one tensor under several names (tied weights in ``torch.save`` files) sets
    ``shares_storage = True`` so that the engine lists such a tensor once.
    """

    files: list[Path]

    def tensors(self) -> list[TensorInfo]: ...

    def read(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...

    def __enter__(self) -> "TensorReader": ...

    def __exit__(self, *exc: object) -> None: ...


R = TypeVar("R", bound="ReaderContext")


class ReaderContext:
    """The context-manager half of every ``TensorReader``: ``with reader:`` closes it at the end."""

    def close(self) -> None:  # pragma: no cover - each reader defines its own
        raise NotImplementedError

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ModelPart:
    """One model inside a checkpoint: the whole checkpoint for a plain model, one component
    (``unet``, ``vae``, ``text_encoder``...) of a diffusers pipeline.

    component: "" for a plain model, else the pipeline subfolder name; matrix names in a
               snapshot are ``f"{component}/{tensor_name}"`` when it is not empty.
    config:    the parsed ``config.json`` of this model (None when there is none).
    """

    component: str
    reader: TensorReader
    config: dict[str, Any] | None = None


@dataclass
class Checkpoint:
    """One point in time of one model.

    label:    human name ("checkpoint-500", "main", the file or folder name).
    path:     the local folder or file it was read from (a Hub cache snapshot folder for Hub ids).
    step:     training step when known (Trainer ``checkpoint-N`` / ``trainer_state.json``).
    revision: Hub revision (branch, tag or commit) when it came from the Hub.
    source:   the SOURCE string the user gave.
    """

    label: str
    path: Path
    parts: list[ModelPart]
    source: str
    step: int | None = None
    revision: str | None = None
    commit: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:  # pragma: no cover - implemented in sources
        from hf_spectral.sources.fingerprint import checkpoint_fingerprint

        return checkpoint_fingerprint(self)

    def close(self) -> None:
        for part in self.parts:
            part.reader.close()

"""Sources: a SOURCE string -> ``Checkpoint``s whose parts read tensors lazily, one at a time."""

from hf_spectral.sources.fingerprint import checkpoint_fingerprint, file_digest
from hf_spectral.sources.readers import SafetensorsReader, TorchBinReader, dtype_code
from hf_spectral.sources.resolve import open_checkpoint, resolve
from hf_spectral.sources.types import Checkpoint, ModelPart, TensorReader

__all__ = [
    "Checkpoint",
    "ModelPart",
    "SafetensorsReader",
    "TensorReader",
    "TorchBinReader",
    "checkpoint_fingerprint",
    "dtype_code",
    "file_digest",
    "open_checkpoint",
    "resolve",
]

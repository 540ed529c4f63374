"""Sources: what a SOURCE is (``classify``) and its ``Checkpoint``s, whose parts read tensors lazily."""

from hf_spectral.sources.classify import ClassifiedSource, SourceKind, classify
from hf_spectral.sources.fingerprint import checkpoint_fingerprint, file_digest
from hf_spectral.sources.local import open_checkpoint
from hf_spectral.sources.readers import SafetensorsReader, TorchBinReader
from hf_spectral.sources.resolve import open_source, resolve
from hf_spectral.sources.types import Checkpoint, ModelPart, TensorReader
from hf_spectral.tensor_info import dtype_code

__all__ = [
    "Checkpoint",
    "ClassifiedSource",
    "ModelPart",
    "SafetensorsReader",
    "SourceKind",
    "TensorReader",
    "TorchBinReader",
    "checkpoint_fingerprint",
    "classify",
    "dtype_code",
    "file_digest",
    "open_checkpoint",
    "open_source",
    "resolve",
]

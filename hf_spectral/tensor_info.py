"""A description of one stored tensor, known from a file header before any data is read."""

from __future__ import annotations

from dataclasses import dataclass

# safetensors dtype codes -> torch dtype names; used to describe tensors without reading them.
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a stored tensor.

    ``dtype`` is the safetensors code ("F32", "BF16", "I64", "U8", ...); readers of other formats
    (torch ``.bin``) translate to these codes so that the rest of the package sees one vocabulary.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's data takes in its file (sub-byte and unknown dtypes count 1 byte)."""
        return self.numel * DTYPE_BYTES.get(self.dtype, 1)


# THE dtype table: torch dtype name -> the code safetensors writes in a file header for it (checked
# against safetensors in tests/test_dtype_codes.py). Live models (the engine) and ``.bin`` files
# (TorchBinReader) are described through it; safetensors files carry the codes themselves.
# complex128 cannot be stored in safetensors: its code follows C64's pattern.
TORCH_TO_CODE: dict[str, str] = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
    "complex64": "C64", "complex128": "C128",
}

# Bytes per element of each safetensors dtype code (the format's own table).
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1,
               "F8_E5M2FNUZ": 1, "F8_E8M0": 1, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "C64": 8, "C128": 16}

# Float dtypes numpy reads directly (little-endian, as safetensors stores them). BF16 has no numpy dtype:
# it is read as uint16 and widened to float32 exactly (its bits are float32's top half). float8 is left to torch.
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}

# Machine epsilon of each float dtype. The numerical-rank tolerance uses the computation's
# (F32 or F64), not the storage dtype's: see hf_spectral.metrics.spectrum.
DTYPE_EPS = {"F64": 2.220446049250313e-16, "F32": 1.1920929e-07, "F16": 9.765625e-04, "BF16": 7.8125e-03,
             "F8_E4M3": 0.125, "F8_E5M2": 0.25}


def dtype_code(dtype: object) -> str:
    """The safetensors code ("F32", "BF16", ...) of a torch dtype (or its name, ``"float32"``)."""
    name = str(dtype).removeprefix("torch.")
    return TORCH_TO_CODE.get(name, name.upper())

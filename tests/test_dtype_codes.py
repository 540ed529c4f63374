"""One dtype vocabulary: a live model's tensors are described with the codes its saved checkpoint's
file headers carry (safetensors writes them itself), and ``.bin`` files are described the same way."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from hf_spectral.engine import AnalysisOptions, plan_model
from hf_spectral.sources import SafetensorsReader, TorchBinReader
from hf_spectral.tensor_info import TORCH_TO_CODE, dtype_code

LIVE_DTYPES = ["float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
               "float8_e4m3fnuz", "float8_e5m2fnuz", "int64", "int8", "uint8", "bool"]


class Mixed(nn.Module):
    """One (frozen) parameter per dtype: the engine plans parameters, decomposing the float ones."""

    def __init__(self) -> None:
        super().__init__()
        for i, name in enumerate(LIVE_DTYPES):
            dtype = getattr(torch, name)
            values = torch.linspace(-1, 1, 12).reshape(4, 3) + i
            tensor = values.to(dtype) if dtype.is_floating_point else values.abs().to(dtype)
            self.register_parameter(f"w_{name}", nn.Parameter(tensor, requires_grad=False))


def header_dtypes(path: Path) -> dict[str, str]:
    """The dtype codes in a safetensors header, read by hand (the format: 8-byte length + JSON)."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return {k: v["dtype"] for k, v in json.loads(raw[8:8 + size]).items() if k != "__metadata__"}


def test_table_is_what_safetensors_writes(tmp_path: Path) -> None:
    for name, code in TORCH_TO_CODE.items():
        dtype = getattr(torch, name, None)
        if dtype is None or name in ("complex128", "float4_e2m1fn_x2"):  # not storable / packed: no header to compare
            continue
        save_file({"x": torch.zeros(2, 2).to(dtype)}, tmp_path / "one.safetensors")
        assert header_dtypes(tmp_path / "one.safetensors") == {"x": code}, name
        assert dtype_code(dtype) == code == dtype_code(name)


def test_live_model_codes_equal_its_saved_checkpoint(tmp_path: Path) -> None:
    model = Mixed()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    saved = header_dtypes(tmp_path / "model.safetensors")
    assert len(saved) == len(LIVE_DTYPES)
    with SafetensorsReader([tmp_path / "model.safetensors"]) as reader:
        assert {t.name: t.dtype for t in reader.tensors()} == saved
    with TorchBinReader([tmp_path / "pytorch_model.bin"]) as reader:
        assert {t.name: t.dtype for t in reader.tensors()} == saved
    plan = plan_model(model, AnalysisOptions(progress=False))
    live = {s.name: s.dtype for s in plan.specs} | {s.name: s.dtype for s in plan.skipped}
    assert live == saved  # every live tensor planned (decomposed or skipped), with its file's code
    assert live["w_float8_e4m3fnuz"] == "F8_E4M3FNUZ" and live["w_bfloat16"] == "BF16"

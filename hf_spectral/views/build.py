"""Build the 2-D matrix a ``MatrixSpec`` describes from the stored tensors it names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import LazyModule
from hf_spectral.errors import SpectralError
from hf_spectral.views.types import MatrixSpec, Reader

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


def build_matrix(spec: MatrixSpec, read: Reader) -> torch.Tensor:
    """The (rows = output, cols = input) matrix of ``spec``, in the stored dtype (the engine upcasts);
    a numpy array when ``read`` gives arrays (single stored tensors only: composing needs torch).

    Composes pruned (``orig·mask``) and weight-normed (``g·v/‖v‖``) weights, transposes HF ``Conv1D``,
    swaps a transposed conv's first two axes, flattens convs to (out, in·∏k).
    """
    parts = [read(name) for name in spec.tensors]
    if spec.composed == "prune":
        w = parts[0] * parts[1].to(parts[0].dtype)
    elif spec.composed == "weight_norm":
        w = weight_norm(parts[0], parts[1])
    else:
        w = parts[0]
    if tuple(w.shape) != tuple(spec.tensor_shape):
        raise SpectralError(
            f"{spec.name}: stored shape {tuple(w.shape)} differs from the planned {tuple(spec.tensor_shape)}; "
            "plan the matrices again for this checkpoint"
        )
    # .T / swapaxes / reshape: the same on a torch tensor and a numpy array (the numpy backend's)
    if spec.kind == "conv1d_hf" or spec.transposed:
        w = w.T
    elif spec.kind == "conv_transpose":
        w = w.swapaxes(0, 1)
    # flatten(1) for convs, and dropping leading 1-dims for bare parameters, are both this reshape
    return w.reshape(spec.shape)


def weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g·v/‖v‖, the norm taken over every axis where g has size 1 (torch ``weight_norm`` for any ``dim``)."""
    dtype = v.dtype
    v32 = v.to(torch.float32) if v.dtype in (torch.float16, torch.bfloat16) else v
    if g.dim() == 0 or g.numel() == 1 and g.dim() != v.dim():
        norm = v32.norm()
    else:
        axes = [i for i, n in enumerate(g.shape) if n == 1]
        norm = v32.norm(dim=axes, keepdim=True) if axes else v32.abs()
    return (g.to(v32.dtype) * v32 / norm).to(dtype)


def restore_weight(spec: MatrixSpec, matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of ``build_matrix`` for a single stored tensor: ``matrix`` (rows = output, cols = input)
    back in the stored layout and shape (``Conv1D`` transposed back, a conv unflattened, a transposed conv's
    first two axes swapped back). Composed weights have no single stored tensor to restore."""
    if spec.composed or len(spec.tensors) != 1:
        raise SpectralError(f"{spec.name}: a composed weight ({', '.join(spec.tensors)}) has no single stored tensor")
    if tuple(matrix.shape) != tuple(spec.shape):
        raise SpectralError(f"{spec.name}: a {tuple(matrix.shape)} matrix cannot replace its {spec.shape} view")
    if spec.kind == "conv1d_hf" or spec.transposed:
        return matrix.t().reshape(spec.tensor_shape)
    if spec.kind == "conv_transpose":
        swapped = (spec.tensor_shape[1], spec.tensor_shape[0], *spec.tensor_shape[2:])
        return matrix.reshape(swapped).transpose(0, 1).contiguous()
    return matrix.reshape(spec.tensor_shape)

"""Singular values of several same-shaped matrices in one batched call.

Same results as :func:`hf_spectral.metrics.singular_values` on each matrix (the same float64 Gram
eigenvalues, or float64 ``svdvals`` for ``precision="float64"``), to the same bounds; what changes is
the number of kernel launches: one stacked Gram product and one batched eigensolver instead of one
of each per matrix. That pays where launches dominate (GPUs, many small matrices); on a CPU LAPACK
loops over the batch anyway, so the engine batches only where ``calibration.batching_wins`` measured
a gain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from hf_spectral._lazy import LazyModule
from hf_spectral.metrics.spectrum import (
    MetricInputError,
    _check_finite,
    _NonFiniteResult,
    _prepare,
    _tall,
    singular_values,
)

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch


def singular_values_batch(matrices: Sequence[torch.Tensor], *, precision: str = "float32") -> list[torch.Tensor]:
    """``singular_values`` of each matrix (all of one shape, on one device), from batched kernels.

    A batch that fails (LAPACK error, overflow, inf/NaN) is redone matrix by matrix, which retries on
    W + 1e-10·I and raises ``DecompositionError`` for the matrix that really fails.
    """
    if not matrices:
        return []
    prepared = [_prepare(m, precision) for m in matrices]
    works = [w for w, _ in prepared]
    out_device = prepared[0][1]
    shape = works[0].shape
    if any(w.shape != shape or w.device != works[0].device for w in works):
        raise MetricInputError("singular_values_batch needs matrices of one shape on one device")
    if min(shape) == 0 or len(works) == 1:
        return [singular_values(w, precision=precision) for w in works]
    stack = torch.stack([_tall(w).to(torch.float64) for w in works])
    try:
        if precision == "float32":
            gram = stack.mT @ stack
            if not bool(torch.isfinite(gram).all()):
                raise _NonFiniteResult("the Gram matrices overflowed")
            eig = torch.linalg.eigvalsh(gram)
            _check_finite(eig)
            sigma = eig.clamp_min(0).sqrt().flip(-1)
        else:
            sigma = torch.linalg.svdvals(stack)
            _check_finite(sigma)
    except (torch.linalg.LinAlgError, _NonFiniteResult):
        return [singular_values(w, precision=precision) for w in works]
    return [s.to(out_device) for s in sigma.unbind(0)]

"""The numpy kernels of :func:`hf_spectral.metrics.singular_values`: the same computation as the torch
ones — σ² as the eigenvalues of the float64 Gram matrix of the tall orientation (``precision="float32"``)
or a float64 SVD (``precision="float64"``) — with numpy's LAPACK. ``singular_values`` validates, retries
on W + 1e-10·I and raises ``DecompositionError`` for both backends.

They exist so that a CPU analysis of a checkpoint never imports torch (~0.8 s of a ~1 s start-up): the
engine hands them numpy arrays memory-mapped from safetensors files (``engine.compute_backend`` says
when). Same bounds as the torch kernels: ``tests/test_numpy_backend.py`` checks both against
``numpy.linalg.svd`` and against each other; as fast as torch's MKL here (``benchmarks/startup_profile.py``).
"""

from __future__ import annotations

import numpy as np


def sigma_gram(matrix: np.ndarray, chunk_elements: int) -> np.ndarray:
    """σ, descending, from the eigenvalues of the float64 Gram matrix of the tall orientation, which is
    converted ``chunk_elements`` at a time (why this is exact enough: ``spectrum._sigma_gram``)."""
    tall = _tall(matrix)
    rows, cols = tall.shape
    step = max(1, chunk_elements // max(cols, 1))
    gram = np.zeros((cols, cols), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, rows, step):
            chunk = tall[start:start + step].astype(np.float64)
            gram += chunk.T @ chunk  # one BLAS syrk
    if not np.isfinite(gram).all():
        return sigma_direct(matrix)  # overflow or inf/NaN input: LAPACK's SVD scales itself
    eig = _finite(np.linalg.eigvalsh(gram, UPLO="L"))
    return np.sqrt(np.clip(eig, 0.0, None))[::-1].copy()


def sigma_direct(matrix: np.ndarray) -> np.ndarray:
    """σ, descending, from a float64 SVD of the tall orientation."""
    return _finite(np.linalg.svd(_tall(matrix).astype(np.float64), compute_uv=False))


def _tall(matrix: np.ndarray) -> np.ndarray:
    return matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T


def _finite(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise FloatingPointError("the decomposition returned inf/NaN")
    return values

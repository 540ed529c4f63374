"""Singular values, top singular vectors and scalar spectrum metrics of one matrix.

Definitions follow the authors' code (dyunis/spectral_dynamics, ``evaluate_run.py``) — see
docs/definitions.md §2 (§6: where code and paper differ). σ is sorted descending, R = min(m, n), p_i = σ_i / Σσ.

Defined results of :func:`spectrum_metrics` (every case is flagged, never a silent NaN):

* zero matrix (σ₁ = 0): ``effective_rank``, ``mass90_rank``, ``stable_rank`` and their normalized
  forms, ``condition_number`` and ``gini`` are NaN; the norms are 0, ``numerical_rank`` is 0,
  ``flag`` is ``"zero_matrix"`` so callers exclude the row from means explicitly.
* rank-deficient (``numerical_rank`` < R): every metric is finite (0·log 0 = 0 in the entropy),
  ``flag`` is ``"rank_deficient"``. ``condition_number`` is still the ratio σ₁/σ_min of the values
  given (inf only when σ_min is exactly 0); for a rank-deficient row σ_min sits at the noise floor,
  so read the flag, not the ratio.
* otherwise ``flag`` is ``""``.

Numerical rank: σᵢ counts when σᵢ > max(m, n)·eps·σ₁ (numpy.linalg.matrix_rank's rule), where eps
is the precision of the *computation* (float32 eps for ``precision="float32"``, whose upcast float64
Gram path resolves σ to ~1e-8·σ₁; float64 eps for ``precision="float64"``), never that of the
storage dtype. A bf16/fp16/fp8 weight is held exactly after upcasting, so its singular values are
those of the stored matrix; the storage rounding (bf16 eps 7.8e-3) is part of the weights, not
noise of the SVD, and a tolerance built from it (max(m, n)·7.8e-3·σ₁ ≥ σ₁ from 128 columns on)
would call every bf16 matrix rank 0.
* :func:`non_finite_metrics` (for a matrix holding inf/NaN): every metric NaN except ``rank_dim``,
  ``flag`` ``"non_finite"``.

Differences from the authors' code: they add 1e-10 to every σ before the entropy, 90%-mass count
and stable rank (which makes those metrics depend on the matrix's scale); we use the exact
definitions with 0·log 0 = 0, so the metrics are scale invariant.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from hf_spectral._lazy import LazyModule, is_tensor
from hf_spectral.errors import SpectralError
from hf_spectral.metrics import numpy_backend
from hf_spectral.status import FLAG_NON_FINITE, FLAG_RANK_DEFICIENT, FLAG_ZERO  # noqa: F401 (re-exported by metrics)

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

PRECISIONS = ("float32", "float64")
FLOAT32_EPS = float(np.finfo(np.float32).eps)
# The authors retry a failed SVD on W + 1e-10·I (safe_svd in evaluate_run.py).
RETRY_JITTER = 1e-10


SPECTRUM_METRICS = (
    "rank_dim",
    "effective_rank",
    "normalized_effective_rank",
    "mass90_rank",
    "normalized_mass90_rank",
    "stable_rank",
    "normalized_stable_rank",
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "condition_number",
    "numerical_rank",
    "gini",
)

# Vectors from the Gram matrix: U = W V / σ amplifies the float64 eigenvector error by (σ₁/σ_k)²;
# with σ_k ≥ 1e-3·σ₁ that stays ~1e-10·σ₁/gap, better than a float32 SVD (~6e-8·σ₁/gap).
# Below it we fall back to a direct float64 SVD.
_GRAM_VECTOR_MIN_RATIO = 1e-3
# Rows of the tall side converted to float64 at a time (2**24 elements = 128 MiB): keeps memory
# flat for a 50257-row embedding without slowing the Gram product.
_CHUNK_ELEMENTS = 1 << 24
# Column blocks of the lower-triangular Gram product (eigh reads only the lower triangle):
# 4 blocks do ~5/8 of the full GEMM's flops; measured 30-35% faster than A.T @ A.
_GRAM_BLOCKS = 4
# Top-k eigenvectors of the Gram matrix (top_eigenvectors), from FILTER_MIN_SIZE rows of the Gram on:
# measured side by side (benchmarks/topk_vectors.py, 1 thread, quiet), decompose / singular_values is
# 1.78x (eigh, its values giving σ) vs 2.08x (eigvalsh + filter) at 384², 1.66x vs 1.66x at 1024², 2.71x
# vs 1.75x at 2048²: below ~1024 one eigh costs no more than eigvalsh plus the filter's few dozen block
# products, and has no convergence to check. The filter uses a block of 2k + 8 vectors; eigh instead when the
# matrix has fewer than 4 blocks' rows, or when the filter would need more than n / 6 block products
# (about eigh's extra cost). Sweeps of at most 30 degrees, each followed by a QR and Rayleigh–Ritz.
# Residual target 1e-12·λ₁.
FILTER_MIN_SIZE = 1024
BLOCK_EXTRA = 8
_RATE_MARGIN = 1.5
_FILTER_MIN_RATIO = 4
_FILTER_DEGREE_DIVISOR = 6
_FILTER_MIN_DEGREE = 24
_FILTER_SWEEP_DEGREE = 30
_FILTER_MIN_WIDTH = 1e-8
_RITZ_TOL = 1e-12


class MetricInputError(SpectralError, ValueError):
    """A metrics function got an input of the wrong shape, dtype or size."""


class DecompositionError(SpectralError, RuntimeError):
    """An SVD failed, also after the authors' retry on W + 1e-10·I."""


class Decomposition(NamedTuple):
    """All singular values plus the top-k singular triplets of one matrix (float64).

    sigma: (R,) all singular values, descending.  u: (m, k)  s: (k,)  v: (n, k), W ≈ u·diag(s)·vᵀ.
    """

    sigma: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor


class _NonFiniteResult(Exception):
    """A LAPACK/cuSOLVER call returned inf/NaN instead of raising."""


# ----------------------------------------------------------------------------------------------
# public decomposition functions
# ----------------------------------------------------------------------------------------------


def singular_values(matrix: torch.Tensor | np.ndarray, *, precision: str = "float32") -> torch.Tensor | np.ndarray:
    """All min(m, n) singular values of a 2-D tensor, descending, float64 on the input's device.

    ``precision="float32"``: every σ within 1e-4·σ₁ of a float64 SVD (in practice ~1e-8·σ₁).
    ``precision="float64"``: within 1e-9·σ₁ (in practice ~1e-14·σ₁).
    Raises :class:`DecompositionError` when the decomposition fails twice (e.g. inf/NaN input).
    A numpy array is decomposed by the numpy backend (``hf_spectral.metrics.numpy_backend``: the same
    computation with numpy's LAPACK, no torch import) and gives a numpy array.
    """
    if isinstance(matrix, np.ndarray):
        array = _prepare_array(matrix, precision)
        if min(array.shape) == 0:
            return np.zeros(0, dtype=np.float64)
        if precision == "float32":
            return _with_retry(lambda w: numpy_backend.sigma_gram(w, _CHUNK_ELEMENTS), array)
        return _with_retry(numpy_backend.sigma_direct, array)
    work, out_device = _prepare(matrix, precision)
    if min(work.shape) == 0:
        return torch.zeros(0, dtype=torch.float64, device=out_device)
    # Measured (torch 2.13 CPU/MKL, seconds, 2 threads on a quiet machine; "1t" = 1 thread while
    # other jobs ran, methods interleaved):
    #   shape       svdvals fp32 as-is / tall       svdvals fp64 tall   Gram fp64 (this path)
    #   768x768     0.037 / 0.037  (1t 0.056)       0.043               0.037  (1t 0.046)
    #   768x3072    0.20  / 0.073  (1t 0.33 / 0.12) 0.094               ~0.045 (1t 0.084)
    #   50257x768   0.65 (tall)    (1t 1.13)        1.14                ~0.45  (1t 0.86)
    #   4096x4096   5.6            (1t 13.7)        9.0                 ~2.6   (1t 4.7)
    # svdvals is ~2.7x slower on a wide matrix than on its transpose, so the direct path always
    # decomposes the tall orientation. "float32" -> Gram eigenvalues in float64 (fastest, ~1e-8·σ₁);
    # "float64" -> svdvals in float64 on the tall orientation (the Gram path cannot reach 1e-9·σ₁).
    compute = _sigma_gram if precision == "float32" else _sigma_direct
    return _with_retry(compute, work).to(out_device)


def top_singular_vectors(
    matrix: torch.Tensor, k: int, *, precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets (U (m×k), S (k,), V (n×k)), float64, descending; k clipped to min(m, n).

    ``full_matrices=False`` semantics; the largest-|·| entry of each V column is positive (U follows),
    so the same matrix always gives the same vectors.
    """
    result = decompose(matrix, k, precision=precision)
    return result.u, result.s, result.v


def decompose(matrix: torch.Tensor, k: int, *, precision: str = "float32") -> Decomposition:
    """All singular values and the top-k triplets from one decomposition (what the engine needs).

    Same accuracy and conventions as :func:`singular_values` and :func:`top_singular_vectors`,
    at roughly the cost of one of them.
    """
    work, out_device = _prepare(matrix, precision)
    k = as_count(k, "k")
    m, n = work.shape
    k = min(k, m, n)
    if min(m, n) == 0 or k == 0:
        sigma = singular_values(work, precision=precision)
        empty = Decomposition(
            sigma,
            work.new_zeros((m, 0), dtype=torch.float64),
            work.new_zeros(0, dtype=torch.float64),
            work.new_zeros((n, 0), dtype=torch.float64),
        )
        return Decomposition(*(t.to(out_device) for t in empty))
    # With vectors (1 thread, interleaved): svd fp32 on the tall side 0.24 / 3.1 / 18.7 s for
    # 3072x768 / 50257x768 / 4096²; Gram + eigh + U = TV/σ 0.14 / 1.26 / 19.3 s (eigh computes all
    # n eigenvectors, which dominates for square matrices). From a 1024-column Gram on, eigvalsh +
    # a Chebyshev filter for the top k replaces eigh (top_eigenvectors; benchmarks/topk_vectors.py).
    compute = _top_gram if precision == "float32" else _top_direct
    sigma, u, s, v = _with_retry(lambda w: compute(w, k), work)
    u, v = _fix_signs(u, v)
    return Decomposition(sigma.to(out_device), u.to(out_device), s.to(out_device), v.to(out_device))


# ----------------------------------------------------------------------------------------------
# scalar metrics
# ----------------------------------------------------------------------------------------------


def spectrum_metrics(
    sigma: torch.Tensor | np.ndarray | Sequence[float],
    shape: tuple[int, int],
    *,
    eps: float = FLOAT32_EPS,
) -> dict[str, float | str]:
    """Scalar metrics (keys :data:`SPECTRUM_METRICS` plus ``flag``) of a full spectrum of an m×n matrix.

    ``eps`` sets the noise floor tol = max(m, n)·eps·σ₁ (numpy.linalg.matrix_rank's rule) used by
    ``numerical_rank`` and the ``rank_deficient`` flag: the precision of the computation that made
    ``sigma`` (see the module docstring; σ from ``precision="float32"`` resolve ~1e-8·σ₁: keep eps ≥
    float32 eps; use ``precision="float64"`` for a float64 eps). ``condition_number`` is σ₁/σ_min. ``sigma`` must hold all
    R = min(m, n) values (a top-k prefix gives wrong ranks: ValueError).
    """
    m, n = _check_shape(shape)
    r_dim = min(m, n)
    s = _to_numpy_1d(sigma, "sigma")
    if s.size != r_dim:
        raise MetricInputError(
            f"sigma has {s.size} values but a {m}x{n} matrix has {r_dim}; pass the full spectrum, not a top-k prefix"
        )
    if r_dim == 0:
        raise MetricInputError(f"a {m}x{n} matrix has no singular values; spectrum metrics are undefined")
    if not np.isfinite(s).all():
        return non_finite_metrics(shape)
    if (s < 0).any():
        raise MetricInputError("sigma has negative entries; singular values are >= 0")
    s = np.sort(s)[::-1]
    s1 = float(s[0])
    if s1 == 0.0:
        return _zero_metrics(r_dim)

    tol = max(m, n) * eps * s1
    numerical_rank = int(np.count_nonzero(s > tol))
    ratio = s / s1  # scaling by σ₁ keeps Σσ² from overflowing
    total = float(np.sum(s))
    # p = σ / Σσ exactly as the authors compute it (ties with 0.9 then resolve like theirs)
    p = s / total if math.isfinite(total) else ratio / ratio.sum()
    nz = p > 0
    entropy = float(-np.sum(p[nz] * np.log(p[nz])))  # 0·log 0 = 0
    effective_rank = min(math.exp(entropy), float(r_dim))  # exp(H) ≤ R; rounding can overshoot by 1 ulp
    over = np.cumsum(p) > 0.9  # strict '>' as in the authors' sv_count
    mass90 = int(np.argmax(over)) + 1 if over.any() else r_dim
    stable_rank = float(np.sum(ratio * ratio))
    smallest = float(s[-1])
    values: dict[str, float | str] = {
        "rank_dim": float(r_dim),
        "effective_rank": effective_rank,
        "normalized_effective_rank": effective_rank / r_dim,
        "mass90_rank": float(mass90),
        "normalized_mass90_rank": mass90 / r_dim,
        "stable_rank": stable_rank,
        "normalized_stable_rank": stable_rank / r_dim,
        "spectral_norm": s1,
        "frobenius_norm": s1 * math.sqrt(stable_rank),
        "nuclear_norm": total,
        "condition_number": s1 / smallest if smallest > 0 else math.inf,
        "numerical_rank": float(numerical_rank),
        "gini": gini(s),
        "flag": FLAG_RANK_DEFICIENT if numerical_rank < r_dim else "",
    }
    return values


def non_finite_metrics(shape: tuple[int, int]) -> dict[str, float | str]:
    """Metrics row for a matrix holding inf/NaN: all NaN except ``rank_dim``, flag ``"non_finite"``."""
    m, n = _check_shape(shape)
    values: dict[str, float | str] = {key: math.nan for key in SPECTRUM_METRICS}
    values["rank_dim"] = float(min(m, n))
    values["flag"] = FLAG_NON_FINITE
    return values


def gini(sigma: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Gini coefficient Σᵢ Σⱼ |σᵢ − σⱼ| / (2 n² mean σ) — 0 for a flat spectrum, (n−1)/n for rank 1.

    NaN for an all-zero vector (the mean is 0).
    """
    x = _to_numpy_1d(sigma, "sigma")
    n = x.size
    if n == 0:
        raise MetricInputError("gini of an empty vector is undefined")
    total = float(np.sum(x))
    if total == 0.0:
        return math.nan
    # O(n log n) form of the authors' double sum: for x sorted ascending,
    # Σᵢ Σⱼ |xᵢ − xⱼ| = 2 Σᵢ (2i − n − 1) xᵢ  (i = 1..n).
    x = np.sort(x)
    weights = 2.0 * np.arange(1, n + 1, dtype=np.float64) - n - 1
    return float(np.sum(weights * x) / (n * total))


# ----------------------------------------------------------------------------------------------
# internals
# ----------------------------------------------------------------------------------------------


def _prepare(matrix: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.device]:
    """Validate; return the tensor on the device to compute on and the device to return on."""
    if precision not in PRECISIONS:
        raise MetricInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(matrix, torch.Tensor):
        raise MetricInputError(f"expected a torch.Tensor, got {type(matrix).__name__}")
    _check_real_2d(matrix, matrix.is_complex())
    matrix = matrix.detach()
    if matrix.device.type == "mps":
        # MPS has no float64: compute and return on the CPU.
        matrix = matrix.cpu()
    return matrix, matrix.device


def _prepare_array(matrix: np.ndarray, precision: str) -> np.ndarray:
    """``_prepare`` for the numpy backend."""
    if precision not in PRECISIONS:
        raise MetricInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _check_real_2d(matrix, np.iscomplexobj(matrix))
    return matrix


def _check_real_2d(matrix: torch.Tensor | np.ndarray, is_complex: bool) -> None:
    if matrix.ndim != 2:
        raise MetricInputError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}; reshape it first")
    if is_complex:
        raise MetricInputError("complex matrices are not supported")


def as_count(value: Any, what: str) -> int:
    """A non-negative python int from any integer-like value (numpy ints included)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise MetricInputError(f"{what} must be a non-negative integer, got {value!r}") from None
    if count < 0:
        raise MetricInputError(f"{what} must be a non-negative integer, got {value!r}")
    return count


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(d) < 0 for d in shape):
        raise MetricInputError(f"shape must be (rows, cols), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _to_numpy_1d(values: Any, what: str) -> np.ndarray:
    if is_tensor(values):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise MetricInputError(f"{what} must be 1-D, got shape {array.shape}")
    return array


def _tall(matrix: torch.Tensor) -> torch.Tensor:
    """The orientation with rows >= cols (a view): LAPACK's SVD is 2.7x faster on it."""
    return matrix if matrix.shape[0] >= matrix.shape[1] else matrix.mT


def _with_retry(compute: Callable[[Any], Any], matrix: torch.Tensor | np.ndarray) -> Any:
    """Run ``compute``; on failure retry once on W + 1e-10·I (float64), then raise DecompositionError.

    The identity is ``eye(m, n)``: ones on the leading min(m, n) diagonal, as in the authors'
    ``safe_svd``. It is added after upcasting to float64, where 1e-10 is not lost to rounding.
    A numpy array (the numpy backend's) is retried with numpy: torch is not imported for it.
    """
    m, n = matrix.shape
    numpy = isinstance(matrix, np.ndarray)
    # numpy_backend raises FloatingPointError where the torch kernels raise _NonFiniteResult
    failures = (np.linalg.LinAlgError, FloatingPointError) if numpy else (torch.linalg.LinAlgError, _NonFiniteResult)
    try:
        return compute(matrix)
    except failures:
        pass
    if numpy:
        jittered = matrix.astype(np.float64) + RETRY_JITTER * np.eye(m, n)
    else:
        jittered = matrix.to(torch.float64) + RETRY_JITTER * torch.eye(m, n, dtype=torch.float64, device=matrix.device)
    try:
        return compute(jittered)
    except failures as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecompositionError(
            f"SVD of a {m}x{n} matrix failed, also on W + 1e-10*I ({reason}); check the weights for inf/NaN"
        ) from exc


def _gram_lower(tall: torch.Tensor) -> torch.Tensor:
    """float64 Gram matrix TᵀT of a tall matrix, lower triangle only (the upper one stays 0)."""
    rows, cols = tall.shape
    gram = torch.zeros((cols, cols), dtype=torch.float64, device=tall.device)
    blocks = _GRAM_BLOCKS if cols >= 256 else 1
    edges = [round(i * cols / blocks) for i in range(blocks + 1)]
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        chunk = tall[start:start + step].to(torch.float64)
        for b in range(blocks):
            lo, hi = edges[b], edges[b + 1]
            gram[lo:hi, :hi].addmm_(chunk[:, lo:hi].mT, chunk[:, :hi])
    return gram


def _matmul_f64(tall: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """tall @ right in float64, converting tall chunk by chunk."""
    rows, cols = tall.shape
    out = torch.empty((rows, right.shape[1]), dtype=torch.float64, device=tall.device)
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        torch.mm(tall[start:start + step].to(torch.float64), right, out=out[start:start + step])
    return out


def _check_finite(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise _NonFiniteResult("the decomposition returned inf/NaN")


def _sigma_direct(matrix: torch.Tensor) -> torch.Tensor:
    sigma = torch.linalg.svdvals(_tall(matrix).to(torch.float64))
    _check_finite(sigma)
    return sigma


def _sigma_gram(matrix: torch.Tensor) -> torch.Tensor:
    # σ² are the eigenvalues of the smaller Gram matrix. In float64 their absolute error is
    # ~eps64·σ₁², so every σ is within ~sqrt(eps64)·σ₁ ≈ 1.5e-8·σ₁ — below the numerical-rank
    # tolerance (≥ eps32·σ₁) that decides what is noise anyway.
    gram = _gram_lower(_tall(matrix))
    if not bool(torch.isfinite(gram).all()):
        # Overflow (|w| > ~1e150 in a float64 matrix) or inf/NaN input: LAPACK's SVD scales itself.
        return _sigma_direct(matrix)
    eig = torch.linalg.eigvalsh(gram, UPLO="L")
    _check_finite(eig)
    return eig.clamp_min(0).sqrt().flip(0)


def _orient(
    matrix: torch.Tensor, left_tall: torch.Tensor, right_tall: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the tall orientation's (left, right) vectors back to the matrix's (U, V)."""
    if matrix.shape[0] >= matrix.shape[1]:
        return left_tall, right_tall
    return right_tall, left_tall


def _top_direct(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    left, sigma, right_h = torch.linalg.svd(_tall(matrix).to(torch.float64), full_matrices=False)
    _check_finite(sigma, left, right_h)
    u, v = _orient(matrix, left[:, :k], right_h[:k].mT)
    return sigma, u, sigma[:k], v


def _top_gram(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    tall = _tall(matrix)
    if tall.numel() <= _CHUNK_ELEMENTS:
        # One float64 copy serves the Gram product and U = T V / σ (converting twice cost ~25%).
        tall = tall.to(torch.float64)
    gram = _gram_lower(tall)
    if not bool(torch.isfinite(gram).all()):
        return _top_direct(matrix, k)
    if gram.shape[0] >= FILTER_MIN_SIZE:
        # All σ from eigvalsh, the values-only path's call (σ the same with and without vectors); the filter
        # starts from them.
        eig, vectors = torch.linalg.eigvalsh(gram, UPLO="L"), None
    else:
        # One eigh gives the values too: a second eigvalsh was a fifth of a MiniLM snapshot (0.20 of 0.95 s, 1
        # thread). Its σ are the values-only path's to rounding (syevd against sterf; ~1e-15·σ₁).
        eig, vectors = torch.linalg.eigh(gram, UPLO="L")
    _check_finite(eig)
    sigma = eig.clamp_min(0).sqrt().flip(0)
    if sigma[0] == 0 or sigma[k - 1] < _GRAM_VECTOR_MIN_RATIO * sigma[0]:
        # U = T V / σ would amplify eigenvector errors too much: decompose directly.
        return _top_direct(matrix, k)
    right = top_eigenvectors(gram, eig, k) if vectors is None else vectors[:, -k:].flip(1).contiguous()
    _check_finite(right)
    left = _matmul_f64(tall, right) / sigma[:k]
    u, v = _orient(matrix, left, right)
    return sigma, u, sigma[:k], v


def top_eigenvectors(gram_lower: torch.Tensor, eig: torch.Tensor, k: int) -> torch.Tensor:
    """The eigenvectors of the k largest eigenvalues of a symmetric matrix (float64, its lower
    triangle given, the upper one ignored), descending, from its ascending eigenvalues ``eig``.

    Chebyshev-filtered subspace iteration with Rayleigh–Ritz (Zhou & Saad 2007): a block of
    p = 2k + 8 vectors is filtered by a Chebyshev polynomial that damps [λ_min, λ_(p+1)] — both
    known exactly from ``eig`` — and amplifies the top of the spectrum, until every one of the top-k
    Ritz pairs has a residual ‖G x − θ x‖ ≤ 1e-12·λ₁ (eigenvector error ≤ residual / eigengap; the
    vectors are stored in float32 anyway). This costs a few dozen (n × p) matrix products instead of
    eigh's n³ eigenvector work; where the gap between λ_k and λ_(p+1) is too small to converge in
    the allowed degree, or the matrix is small, it calls eigh (the same vectors to rounding).
    """
    n = gram_lower.shape[0]
    block = min(n, 2 * k + BLOCK_EXTRA)
    if n < _FILTER_MIN_RATIO * block:
        return _eigh_top(gram_lower, k)
    lam = eig.flip(0).tolist()
    top, low, high = lam[0], lam[-1], lam[block]
    if top <= 0:
        return _eigh_top(gram_lower, k)
    half = max((high - low) / 2, _FILTER_MIN_WIDTH * top)
    centre = (high + low) / 2
    # Convergence of the k-th pair per filter degree: acosh of where λ_k sits relative to the damped
    # interval (in practice about 2/3 of it: _RATE_MARGIN).
    rate = math.acosh(max((lam[k - 1] - centre) / half, 1.0)) / _RATE_MARGIN
    tol = _RITZ_TOL * top
    needed = math.log(math.sqrt(n) / _RITZ_TOL) / rate if rate > 0 else math.inf
    budget = max(_FILTER_MIN_DEGREE, n // _FILTER_DEGREE_DIVISOR)
    if needed > budget:
        return _eigh_top(gram_lower, k)
    # One sweep amplifies λ₁'s direction over λ_k's by exp(degree·spread): keep that under 1e8, so
    # that the k-th direction stays well above the rounding of the first.
    spread = math.acosh(max((top - centre) / half, 1.0)) - _RATE_MARGIN * rate
    sweep_degree = max(4, min(_FILTER_SWEEP_DEGREE, int(math.log(1e8) / spread) if spread > 0 else _FILTER_SWEEP_DEGREE))
    lower = gram_lower.tril()  # _gram_lower fills whole diagonal blocks: keep the exact lower triangle
    gram = lower + lower.tril(-1).mT
    generator = torch.Generator().manual_seed(0)  # the same matrix always gives the same vectors
    start = torch.randn(n, block, generator=generator, dtype=torch.float64).to(gram.device)
    basis = torch.linalg.qr(start).Q
    spent, degree = 0, min(sweep_degree, math.ceil(needed))
    while spent + degree <= budget:
        basis = torch.linalg.qr(_chebyshev_filter(gram, basis, degree, centre, half, top)).Q
        spent += degree + 1
        product = gram @ basis
        ritz_values, ritz_vectors = torch.linalg.eigh(basis.mT @ product)
        ritz_values, ritz_vectors = ritz_values.flip(0), ritz_vectors.flip(1)
        basis, product = basis @ ritz_vectors, product @ ritz_vectors
        worst = float((product[:, :k] - basis[:, :k] * ritz_values[:k]).norm(dim=0).max())
        if worst <= tol:
            return basis[:, :k].contiguous()
        degree = max(2, min(sweep_degree, math.ceil(math.log(worst / tol) / rate) + 1))
    return _eigh_top(gram_lower, k)


def _chebyshev_filter(gram: torch.Tensor, block: torch.Tensor, degree: int, centre: float, half: float,
                      top: float) -> torch.Tensor:
    """T_degree of the spectrum mapped so that [centre − half, centre + half] → [−1, 1], applied to
    ``block``, scaled to keep the top eigenvalue's component ~1 (Zhou & Saad's three-term recurrence)."""
    sigma = half / (top - centre)
    tau = 2 / sigma
    previous = block
    current = torch.addmm(block, gram, block, beta=-centre * sigma / half, alpha=sigma / half)
    for _ in range(degree - 1):
        new_sigma = 1 / (tau - sigma)
        following = torch.addmm(previous, gram, current, beta=-sigma * new_sigma, alpha=2 * new_sigma / half)
        following.add_(current, alpha=-2 * new_sigma * centre / half)
        previous, current, sigma = current, following, new_sigma
    return current


def _eigh_top(gram_lower: torch.Tensor, k: int) -> torch.Tensor:
    _, vecs = torch.linalg.eigh(gram_lower, UPLO="L")
    return vecs[:, -k:].flip(1).contiguous()


def _fix_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each (u, v) pair so that the largest-|·| entry of v is positive."""
    if v.numel() == 0:
        return u, v
    index = v.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(v.gather(0, index))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, v * signs


def _zero_metrics(r_dim: int) -> dict[str, float | str]:
    values: dict[str, float | str] = {key: math.nan for key in SPECTRUM_METRICS}
    values.update(
        rank_dim=float(r_dim), spectral_norm=0.0, frobenius_norm=0.0, nuclear_norm=0.0,
        numerical_rank=0.0, flag=FLAG_ZERO,
    )
    return values

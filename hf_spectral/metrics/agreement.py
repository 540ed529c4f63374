"""Agreement of two decompositions and alignment of consecutive layers (docs/definitions.md §3, §4).

Vectors are the *columns* of the tensors passed in (U (m×k), V (n×k), as returned by
:func:`hf_spectral.metrics.top_singular_vectors`). Every result is float64 on the first
argument's device; all products take absolute values, so the sign of a vector never matters.

Checked against the authors' code (dyunis/spectral_dynamics):

* agreement (``svd_agreement``): S = |U_aᵀ U_b| ⊙ |V_aᵀ V_b| — identical (they take |·| of the
  product, which equals the product of the |·|).
* alignment (``evaluate_run.py``): they compute |V'ᵀ U| (next × prev); we return its transpose
  |Uᵀ V'| (prev × next) — the diagonal, which is what is plotted and scored, is the same.
* embedding → first layer: they use the embedding's V (``U_prev = Vh.T``) — :func:`in_in_alignment`.
* conv → conv: see :func:`conv_centre_alignment`.
* Q ↔ K: they reshape W_q, W_k (d, d_model) to (heads, d_head, d_model), SVD each head and
  compare left vectors |U_qᵀ U_k|; the plot averages over heads — :func:`qk_head_alignment`.
* score: mean of the first 10 diagonal entries (``inter_layer_alignment_score``) — :func:`top_score`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import LazyModule
from hf_spectral.metrics.spectrum import MetricInputError, as_count, decompose

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

DEFAULT_K = 100


# ----------------------------------------------------------------------------------------------
# agreement of two decompositions of the same-shaped matrix (Eq. 5)
# ----------------------------------------------------------------------------------------------


def agreement_matrix(
    u_a: torch.Tensor, v_a: torch.Tensor, u_b: torch.Tensor, v_b: torch.Tensor
) -> torch.Tensor:
    """S_jk = |u_jᵀ u'_k| · |v_jᵀ v'_k|, a (k_a × k_b) float64 matrix."""
    u_a, v_a, u_b, v_b = _pairs(u_a, v_a, u_b, v_b)
    return (u_a.mT @ u_b).abs() * (v_a.mT @ v_b).abs()


def agreement_diagonal(
    u_a: torch.Tensor, v_a: torch.Tensor, u_b: torch.Tensor, v_b: torch.Tensor, k: int | None = None
) -> torch.Tensor:
    """Diagonal S_ii of :func:`agreement_matrix` for i < min(k, k_a, k_b), without the full matrix."""
    u_a, v_a, u_b, v_b = _pairs(u_a, v_a, u_b, v_b)
    k = _clip_k(k, u_a.shape[1], u_b.shape[1])
    return _column_dots(u_a[:, :k], u_b[:, :k]) * _column_dots(v_a[:, :k], v_b[:, :k])


def top_score(diagonal: torch.Tensor, top: int = 10) -> float:
    """Mean of the first min(top, len) diagonal entries (the paper's summary score)."""
    if not isinstance(diagonal, torch.Tensor):
        diagonal = torch.as_tensor(diagonal)
    if diagonal.ndim != 1 or diagonal.numel() == 0:
        raise MetricInputError(f"top_score needs a non-empty 1-D diagonal, got shape {tuple(diagonal.shape)}")
    top = as_count(top, "top")
    if top < 1:
        raise MetricInputError(f"top must be >= 1, got {top}")
    return float(diagonal[:top].to(torch.float64).mean())


def subspace_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """‖A_kᵀ B_k‖_F² / k ∈ [0, 1] for the spans of the first k (orthonormal) columns of a and b.

    1 when the two top-k subspaces coincide, even if individual vectors rotate inside them (as
    they do when singular values are nearly equal); k is clipped to the columns available.
    """
    a, b = _as_f64(a, b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise MetricInputError(f"subspace_overlap needs two matrices with equal rows, got {tuple(a.shape)} and {tuple(b.shape)}")
    k = _clip_k(k, a.shape[1], b.shape[1])
    if k == 0:
        raise MetricInputError("subspace_overlap needs k >= 1 and at least one column on each side")
    return float((a[:, :k].mT @ b[:, :k]).square().sum() / k)


def agreement_subspace(
    u_a: torch.Tensor, v_a: torch.Tensor, u_b: torch.Tensor, v_b: torch.Tensor, k: int
) -> float:
    """Mean of the top-k left and right :func:`subspace_overlap` — rotation-robust agreement."""
    u_a, v_a, u_b, v_b = _pairs(u_a, v_a, u_b, v_b)
    return 0.5 * (subspace_overlap(u_a, u_b, k) + subspace_overlap(v_a, v_b, k))


# ----------------------------------------------------------------------------------------------
# alignment of consecutive layers (Eqs. 3-4), from vectors
# ----------------------------------------------------------------------------------------------


def alignment_matrix(u_prev: torch.Tensor, v_next: torch.Tensor) -> torch.Tensor:
    """A_jk = |⟨u_j, v'_k⟩|: prev's output-space vectors against next's input-space vectors."""
    u_prev, v_next = _shared_space(u_prev, v_next)
    return (u_prev.mT @ v_next).abs()


def alignment_diagonal(u_prev: torch.Tensor, v_next: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Diagonal A_ii of :func:`alignment_matrix` for i < min(k, available)."""
    u_prev, v_next = _shared_space(u_prev, v_next)
    k = _clip_k(k, u_prev.shape[1], v_next.shape[1])
    return _column_dots(u_prev[:, :k], v_next[:, :k])


def kernel_centre(
    v_next: torch.Tensor, in_channels: int, kernel_size: tuple[int, ...], *, renormalize: bool = False
) -> torch.Tensor:
    """Right vectors of a flattened conv (c_in·∏kernel × k) taken at the centre kernel position (c_in × k).

    Each column is read as (c_in, *kernel) — the layout of ``weight.flatten(1)`` — and indexed at
    ``kernel[i] // 2`` on every axis (the authors' ``shape // 2``; the lower middle for even sizes).
    The authors do not renormalize the slice (its norm is < 1); ``renormalize=True`` scales each
    column to unit norm (zero columns stay zero).
    """
    (v_next,) = _as_f64(v_next)
    kernel_size = tuple(int(s) for s in kernel_size)
    if v_next.ndim != 2 or v_next.shape[0] != in_channels * _prod(kernel_size):
        raise MetricInputError(
            f"conv right vectors of shape {tuple(v_next.shape)} do not have in_channels·∏kernel = "
            f"{in_channels}·{_prod(kernel_size)} rows"
        )
    columns = v_next.shape[1]
    centre = tuple(size // 2 for size in kernel_size)
    sliced = v_next.mT.reshape(columns, in_channels, *kernel_size)[(slice(None), slice(None), *centre)].mT
    if renormalize:
        norms = sliced.norm(dim=0, keepdim=True)
        sliced = sliced / torch.where(norms > 0, norms, torch.ones_like(norms))
    return sliced


# ----------------------------------------------------------------------------------------------
# alignment helpers taking weight matrices (what the engine calls)
# ----------------------------------------------------------------------------------------------


def out_in_alignment(
    w_prev: torch.Tensor, w_next: torch.Tensor, k: int = DEFAULT_K, *, precision: str = "float32"
) -> torch.Tensor:
    """|U_prevᵀ V_next| diagonal: prev's left vectors (length rows(w_prev)) against next's right
    vectors (length cols(w_next)); needs rows(w_prev) == cols(w_next)."""
    return _against_next_inputs(w_prev, w_next, k, precision, prev_side="rows")


def in_in_alignment(
    w_prev: torch.Tensor, w_next: torch.Tensor, k: int = DEFAULT_K, *, precision: str = "float32"
) -> torch.Tensor:
    """|V_prevᵀ V_next| diagonal: right against right vectors (an embedding stored (vocab, d)
    feeding a layer: its d-side is its column side); needs cols(w_prev) == cols(w_next)."""
    return _against_next_inputs(w_prev, w_next, k, precision, prev_side="cols")


def _against_next_inputs(w_prev: torch.Tensor, w_next: torch.Tensor, k: int, precision: str, *,
                         prev_side: str) -> torch.Tensor:
    """Diagonal of prev's ``rows``-side (left) or ``cols``-side (right) vectors against next's right vectors."""
    _check_matrix(w_prev, "w_prev")
    _check_matrix(w_next, "w_next")
    mode, dim = ("out_in", 0) if prev_side == "rows" else ("in_in", 1)
    if w_prev.shape[dim] != w_next.shape[1]:
        raise MetricInputError(f"{mode} alignment needs {prev_side}(prev) == cols(next), "
                               f"got {tuple(w_prev.shape)} -> {tuple(w_next.shape)}")
    prev = decompose(w_prev, k, precision=precision)
    v_next = decompose(w_next, k, precision=precision).v
    return alignment_diagonal(prev.u if dim == 0 else prev.v, v_next, k)


def conv_centre_alignment(
    w_prev: torch.Tensor,
    w_next: torch.Tensor,
    k: int = DEFAULT_K,
    *,
    precision: str = "float32",
    renormalize: bool = False,
) -> torch.Tensor:
    """Alignment of a layer with the conv it feeds, at the centre kernel position.

    w_prev: the previous layer's matrix (c_mid × anything; a conv already flattened, or a linear).
    w_next: the next conv's kernel (c_out, c_mid, *kernel) — transposed convs must be given with
    their first two axes swapped. Next's right vectors (of ``w_next.flatten(1)``) are cut to the
    centre position by :func:`kernel_centre` (not renormalized, as in the authors' code) and
    compared with prev's left vectors.
    """
    _check_matrix(w_prev, "w_prev")
    if not isinstance(w_next, torch.Tensor) or w_next.ndim < 3:
        shape = tuple(w_next.shape) if isinstance(w_next, torch.Tensor) else type(w_next).__name__
        raise MetricInputError(f"w_next must be a conv kernel (c_out, c_in, *kernel), got {shape}")
    in_channels = int(w_next.shape[1])
    if w_prev.shape[0] != in_channels:
        raise MetricInputError(
            f"conv alignment needs rows(prev) == in_channels(next), got {tuple(w_prev.shape)} -> {tuple(w_next.shape)}"
        )
    u_prev = decompose(w_prev, k, precision=precision).u
    v_next = decompose(w_next.flatten(1), k, precision=precision).v
    centre = kernel_centre(v_next, in_channels, tuple(w_next.shape[2:]), renormalize=renormalize)
    return alignment_diagonal(u_prev, centre, k)


def qk_head_alignment_per_head(
    w_q: torch.Tensor, w_k: torch.Tensor, num_heads: int, k: int = DEFAULT_K, *, precision: str = "float32"
) -> torch.Tensor:
    """Per-head |U_qᵀ U_k| diagonals, a (num_heads × min(k, d_head)) float64 tensor.

    W_q and W_k (d × d_model, rows = output) are cut into num_heads blocks of d_head consecutive
    rows (the authors' ``reshape(heads, d_head, d_model)``); each head's left vectors span the
    head-output space that QKᵀ contracts.
    """
    _check_matrix(w_q, "w_q")
    _check_matrix(w_k, "w_k")
    if w_q.shape != w_k.shape:
        raise MetricInputError(
            f"Q and K must have the same shape (grouped-query attention is not supported), got {tuple(w_q.shape)} and {tuple(w_k.shape)}"
        )
    num_heads = as_count(num_heads, "num_heads")
    if num_heads < 1 or w_q.shape[0] % num_heads:
        raise MetricInputError(f"num_heads={num_heads!r} must be a positive divisor of the {w_q.shape[0]} rows of Q/K")
    d_head = w_q.shape[0] // num_heads
    diagonals = []
    for head in range(num_heads):
        rows = slice(head * d_head, (head + 1) * d_head)
        u_q = decompose(w_q[rows], k, precision=precision).u
        u_k = decompose(w_k[rows], k, precision=precision).u
        diagonals.append(alignment_diagonal(u_q, u_k, k))
    return torch.stack(diagonals)


def qk_head_alignment(
    w_q: torch.Tensor, w_k: torch.Tensor, num_heads: int, k: int = DEFAULT_K, *, precision: str = "float32"
) -> torch.Tensor:
    """Q ↔ K alignment: the per-head |U_qᵀ U_k| diagonals averaged over heads (length min(k, d_head))."""
    return qk_head_alignment_per_head(w_q, w_k, num_heads, k, precision=precision).mean(dim=0)


# ----------------------------------------------------------------------------------------------
# internals
# ----------------------------------------------------------------------------------------------


def _as_f64(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """float64 copies on the first tensor's device."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise MetricInputError(f"expected torch.Tensor vectors, got {type(t).__name__}")
    device = tensors[0].device if tensors[0].device.type != "mps" else torch.device("cpu")
    return tuple(t.detach().to(device=device, dtype=torch.float64) for t in tensors)


def _pairs(u_a, v_a, u_b, v_b) -> tuple[torch.Tensor, ...]:
    u_a, v_a, u_b, v_b = _as_f64(u_a, v_a, u_b, v_b)
    if any(t.ndim != 2 for t in (u_a, v_a, u_b, v_b)):
        raise MetricInputError("agreement needs 2-D U and V (vectors as columns)")
    if u_a.shape[0] != u_b.shape[0] or v_a.shape[0] != v_b.shape[0]:
        raise MetricInputError(
            f"agreement needs decompositions of same-shaped matrices, got U {tuple(u_a.shape)} vs {tuple(u_b.shape)}, "
            f"V {tuple(v_a.shape)} vs {tuple(v_b.shape)}"
        )
    if u_a.shape[1] != v_a.shape[1] or u_b.shape[1] != v_b.shape[1]:
        raise MetricInputError("U and V of one decomposition must have the same number of columns")
    return u_a, v_a, u_b, v_b


def _shared_space(u_prev: torch.Tensor, v_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u_prev, v_next = _as_f64(u_prev, v_next)
    if u_prev.ndim != 2 or v_next.ndim != 2 or u_prev.shape[0] != v_next.shape[0]:
        raise MetricInputError(
            f"alignment needs vectors of the same length, got {tuple(u_prev.shape)} and {tuple(v_next.shape)}"
        )
    return u_prev, v_next


def _clip_k(k: int | None, *available: int) -> int:
    limit = min(available)
    if k is None:
        return limit
    return min(as_count(k, "k"), limit)


def _column_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|aᵢ · bᵢ| for each column i."""
    return (a * b).sum(dim=0).abs()


def _check_matrix(matrix: torch.Tensor, what: str) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise MetricInputError(f"{what} must be a 2-D matrix, got {shape}")


def _prod(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= v
    return result

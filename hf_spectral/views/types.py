"""What the views layer hands to the engine: matrices to decompose, skipped tensors, alignment pairs.

Views know tensor *names, shapes and dtypes* (``TensorInfo``) and the model config; they never
read a file. ``MatrixSpec.materialize`` receives a ``read(name) -> torch.Tensor`` callable from
the engine and builds the 2-D matrix (composing pruning masks / weight norm, transposing,
flattening) from the tensors it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Reader = Callable[[str], torch.Tensor]


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix to decompose.

    name:          the weight's name, e.g. ``transformer.h.0.attn.c_attn.weight``; for composed
                   weights the name of the real weight (``conv.weight`` for ``conv.weight_g``/``_v``,
                   ``fc.weight`` for ``fc.weight_orig``/``fc.weight_mask``).
    kind:          linear | conv1d_hf | conv | conv_transpose | embedding | lstm_ih | lstm_hh |
                   fused_qkv | matrix (2-D of unknown role)
    tensors:       the stored tensor names read to build it, in the order ``materialize`` needs.
    tensor_shape:  shape of the (composed) stored weight before reshaping.
    shape:         (rows, cols) of the matrix: rows = output side, cols = input side.
    dtype:         stored dtype code (``TensorInfo.dtype``) of the main tensor.
    view:          how the orientation was decided: ``module`` (module class known), ``registry``
                   (model-type rule) or ``default`` (generic rule, e.g. conv assumed not transposed).
    extra:         kind-specific facts: ``num_heads``, ``qkv_split`` (row ranges of Q, K, V),
                   ``kernel_size``, ``gates`` ("ifgo"), ``composed`` ("prune" | "weight_norm").
    """

    name: str
    kind: str
    tensors: tuple[str, ...]
    tensor_shape: tuple[int, ...]
    shape: tuple[int, int]
    dtype: str
    view: str = "default"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def cost(self) -> float:
        """Relative SVD cost, m·n·min(m, n)."""
        m, n = self.shape
        return float(m) * float(n) * float(min(m, n))

    def materialize(self, read: Reader) -> torch.Tensor:  # pragma: no cover - implemented in views
        from hf_spectral.views.build import build_matrix

        return build_matrix(self, read)


@dataclass(frozen=True)
class SkippedTensor:
    """A tensor with 2 or more dimensions that is not analyzed, and why (nothing is skipped silently)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


@dataclass(frozen=True)
class MatrixSlice:
    """Part of a planned matrix used on one side of an alignment pair.

    rows / cols: half-open ranges into the matrix (None = all). heads: split the selected rows
    into this many equal head blocks (Q↔K per-head alignment).
    """

    matrix: str
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None
    heads: int | None = None


@dataclass(frozen=True)
class AlignmentPair:
    """Two matrices whose shared space is compared (paper-notes §2, Eqs. 3-4).

    mode:
      ``out_in``      A = |U_prevᵀ V_next|: prev's output space against next's input space.
      ``conv_centre`` like out_in, next is a conv: its right vectors reshaped to (c_in, kh, kw) and
                      taken at the centre kernel position (``kernel_size`` in ``extra``).
      ``qk_heads``    Q↔K per head: |U_qᵀ U_k| of each head block (rows), averaged over heads.
      ``in_in``       A = |V_prevᵀ V_next| (an embedding stored (vocab, d): its d-side is its input side).
    """

    prev: MatrixSlice
    next: MatrixSlice
    mode: str
    label: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

"""What the views layer hands to the engine: matrices to decompose, skipped tensors, alignment pairs.

Views know tensor *names, shapes and dtypes* (``TensorInfo``) and the model config; they never
read a file. ``MatrixSpec.materialize`` receives a ``read(name) -> torch.Tensor`` callable from
the engine and builds the 2-D matrix (composing pruning masks / weight norm, transposing,
flattening) from the tensors it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from hf_spectral._lazy import LazyModule

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

Reader = Callable[[str], "torch.Tensor"]  # a string: torch is imported on first use
Range = tuple[int, int]

# What a matrix is; it decides the orientation and how it pairs.
MatrixKind = Literal["linear", "conv1d_hf", "conv", "conv_transpose", "embedding", "lstm_ih", "lstm_hh",
                     "fused_qkv", "matrix"]
ViewSource = Literal["module", "registry", "default"]
Composition = Literal["prune", "weight_norm"]
QKVLayout = Literal["blocks", "per_head"]
AlignmentMode = Literal["out_in", "conv_centre", "qk_heads", "in_in"]

_FACT = {"default": None, "compare": False, "hash": False}  # kind-specific facts do not make two specs differ


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix to decompose.

    name:          the weight's name, e.g. ``transformer.h.0.attn.c_attn.weight``; for composed
                   weights the name of the real weight (``conv.weight`` for ``conv.weight_g``/``_v``,
                   ``fc.weight`` for ``fc.weight_orig``/``fc.weight_mask``).
    kind:          linear | conv1d_hf | conv | conv_transpose | embedding | lstm_ih | lstm_hh |
                   fused_qkv | matrix (2-D of unknown role)
    tensors:       the stored tensor names read to build it, in the order ``build_matrix`` needs.
    tensor_shape:  shape of the (composed) stored weight before reshaping.
    shape:         (rows, cols) of the matrix: rows = output side, cols = input side.
    dtype:         stored dtype code (``TensorInfo.dtype``) of the main tensor.
    view:          how the orientation was decided: ``module`` (module class known), ``registry``
                   (model-type rule) or ``default`` (generic rule, e.g. conv assumed not transposed).

    Kind-specific facts (None / empty when they do not apply):
    composed:      ``prune`` (orig·mask) or ``weight_norm`` (g·v/‖v‖): built from several tensors.
    transposed:    stored (in, out) although not an HF ``Conv1D`` (a registry rule says so).
    kernel_size / in_channels: a conv's kernel and input channels (cols = in_channels·∏kernel_size).
    layer / direction / gates / hidden_size: a recurrent weight's layer, ``forward`` | ``reverse``,
                   gate order (``ifgo`` for LSTM) and hidden size (rows = len(gates)·hidden_size).
    num_heads / num_kv_heads / head_dim / qkv_layout / qkv_split: a fused Q/K/V projection's heads,
                   its row layout and the row ranges of Q, K and V (name → ranges whose concatenation
                   is that projection: one range each for [Q; K; V] blocks, one per head when interleaved).
    """

    name: str
    kind: MatrixKind
    tensors: tuple[str, ...]
    tensor_shape: tuple[int, ...]
    shape: tuple[int, int]
    dtype: str
    view: ViewSource = "default"
    composed: Composition | None = field(**_FACT)
    transposed: bool = field(default=False, compare=False, hash=False)
    kernel_size: tuple[int, ...] | None = field(**_FACT)
    in_channels: int | None = field(**_FACT)
    layer: int | None = field(**_FACT)
    direction: Literal["forward", "reverse"] | None = field(**_FACT)
    gates: str | None = field(**_FACT)
    hidden_size: int | None = field(**_FACT)
    num_heads: int | None = field(**_FACT)
    num_kv_heads: int | None = field(**_FACT)
    head_dim: int | None = field(**_FACT)
    qkv_layout: QKVLayout | None = field(**_FACT)
    qkv_split: Mapping[str, tuple[Range, ...]] | None = field(**_FACT)

    @property
    def cost(self) -> float:
        """Relative SVD cost, m·n·min(m, n)."""
        m, n = self.shape
        return float(m) * float(n) * float(min(m, n))

    @property
    def extra(self) -> dict[str, Any]:
        """The kind-specific facts that apply, by name (read-only; for display and tables)."""
        return _set_facts(self, _SPEC_FACTS)


_SPEC_FACTS = ("composed", "transposed", "kernel_size", "in_channels", "layer", "direction", "gates", "hidden_size",
               "num_heads", "num_kv_heads", "head_dim", "qkv_layout", "qkv_split")


def _set_facts(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    values = ((name, getattr(obj, name)) for name in names)
    return {name: value for name, value in values if value is not None and value is not False}


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
    rows: Range | None = None
    cols: Range | None = None
    heads: int | None = None


@dataclass(frozen=True)
class AlignmentPair:
    """Two matrices whose shared space is compared (docs/definitions.md, "Alignment").

    mode:
      ``out_in``      A = |U_prevᵀ V_next|: prev's output space against next's input space.
      ``conv_centre`` like out_in, next is a conv: its right vectors reshaped to (c_in, kh, kw) and
                      taken at the centre kernel position (``kernel_size``).
      ``qk_heads``    Q↔K per head: |U_qᵀ U_k| of each head block (rows), averaged over heads.
      ``in_in``       A = |V_prevᵀ V_next| (an embedding stored (vocab, d): its d-side is its input side).
    gate:             ``"g"`` when prev's rows are one gate of a stacked recurrent matrix: its left
                      vectors are those of the whole stacked matrix, restricted to the gate's rows.
    """

    prev: MatrixSlice
    next: MatrixSlice
    mode: AlignmentMode
    label: str
    gate: str | None = field(**_FACT)
    kernel_size: tuple[int, ...] | None = field(**_FACT)

    @property
    def extra(self) -> dict[str, Any]:
        """The facts that apply (``gate``, a conv_centre pair's ``kernel_size``), by name (read-only)."""
        facts = _set_facts(self, ("gate",))
        if self.mode == "conv_centre":
            facts["kernel_size"] = tuple(self.kernel_size or ())
        return facts

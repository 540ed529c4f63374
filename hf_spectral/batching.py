"""Units of work for the engine: single matrices, or batches of same-shaped matrices decomposed in
one batched call (``metrics.singular_values_batch``).

A Transformer has 4-6 matrix shapes repeated over its layers; on a GPU one call per shape instead of
one per matrix removes most launch overhead. Whether a device gains is measured, not assumed
(``calibration.batching_wins``). Batches are the units the engine deals over processes by cost, so a
group of same-shaped matrices is cut into at least as many batches as there are processes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from hf_spectral.views.types import MatrixSpec

BATCH_MODES = ("auto", "on", "off")
# A batch holds its matrices as one float64 stack: at most 2**25 elements (256 MiB), and only matrices
# of at most 2**22 elements (32 MiB in float64) join one. Larger matrices are compute-bound: batching
# saves nothing there, and the unbatched path converts them chunk by chunk in flat memory.
MAX_BATCH_ELEMENTS = 1 << 25
MAX_MATRIX_ELEMENTS = 1 << 22


def batchable(spec: MatrixSpec, top_k: int) -> bool:
    """Whether ``spec`` may join a batch: singular values only (no vectors), small enough."""
    rows, cols = spec.shape
    return top_k == 0 and 0 < rows * cols <= MAX_MATRIX_ELEMENTS


def work_units(specs: Sequence[MatrixSpec], *, batched: bool, top_k: int = 0, num_processes: int = 1) -> list[list[int]]:
    """Indices of ``specs`` grouped into units of work, in plan order of each unit's first matrix.

    Unbatched: one matrix per unit. Batched: same-shaped, same-dtype batchable matrices share a unit of
    at most ``MAX_BATCH_ELEMENTS``, and a group is cut into at least ``num_processes`` units when it has
    that many matrices, so that dealing by cost can still balance the processes.
    """
    if not batched:
        return [[i] for i in range(len(specs))]
    groups: dict[tuple, list[int]] = defaultdict(list)
    units: list[list[int]] = []
    for i, spec in enumerate(specs):
        if batchable(spec, top_k):
            groups[(spec.shape, spec.dtype)].append(i)
        else:
            units.append([i])
    for (shape, _dtype), members in groups.items():
        per_batch = max(1, MAX_BATCH_ELEMENTS // (shape[0] * shape[1]))
        per_batch = min(per_batch, math.ceil(len(members) / max(1, num_processes)))
        units += [members[start:start + per_batch] for start in range(0, len(members), per_batch)]
    return sorted(units, key=lambda unit: unit[0])

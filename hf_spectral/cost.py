"""The cost model: FLOPs, bytes and predicted seconds of a plan, before any tensor data is read.

For an m×n matrix with M = max(m, n) rows on its tall side and R = min(m, n) (what the engine does,
``metrics.spectrum``):

* singular values (default, ``float32``): the float64 Gram matrix TᵀT, lower triangle in 4 column
  blocks (2·M·R²·5/8 FLOPs; 2·M·R² when R < 256), then ``eigvalsh`` of R×R (~4/3·R³ FLOPs);
* with ``top_k`` vectors: ``eigh`` (~9·R³) and U = T·V/σ (2·M·R·k); from R = ``FILTER_MIN_SIZE`` on,
  ``eigvalsh`` plus a Chebyshev filter on a block of 2k + 8 vectors (~60 products of 2·R²·(2k + 8) FLOPs);
* ``float64``: ``svdvals`` of the tall float64 matrix (~4·M·R² − 4/3·R³; ×3 with vectors);
* bytes: the stored tensors read once; the float64 working copy is converted chunk by chunk.

Seconds come from measured rates of the device (``hf_spectral.calibration``): GEMM FLOP/s, the
eigensolvers' seconds per R³, the float64 SVD's seconds per M·R², the conversion's bytes/s, a fixed
cost per matrix, and (for the whole process) the measured start-up. Batched units cost their members'
sum divided by the measured batched speed-up. Several processes: the units are dealt by cost as the
engine deals them; CPU processes on one machine share its cores (rates scale with threads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from hf_spectral.calibration import Calibration
from hf_spectral.metrics.spectrum import BLOCK_EXTRA, FILTER_MIN_SIZE
from hf_spectral.views.types import AlignmentPair, MatrixSpec

_BLOCKED_GRAM_FRACTION = 5 / 8  # metrics.spectrum._GRAM_BLOCKS = 4 column blocks of the lower triangle
_EIGVALSH_FLOPS = 4 / 3  # × R³, Householder tridiagonalization (values only)
_EIGH_FLOPS = 9.0  # × R³, with eigenvectors (divide and conquer)
_SVD_VECTOR_FACTOR = 3.0  # float64 SVD with vectors against values only
_FILTER_DEGREES = 60  # typical filter degree, Rayleigh–Ritz included (24-61 measured: MiniLM and synthetic spectra)


@dataclass(frozen=True)
class MatrixCost:
    """What one planned matrix (or alignment pair) costs: FLOPs, bytes read, predicted seconds."""

    name: str
    shape: tuple[int, int]
    dtype: str
    flops: float
    bytes_read: int
    seconds: float
    unit: int  # index of its unit of work (matrices of one batch share it)


@dataclass
class PlanCost:
    """Cost of a whole plan on one device kind, dealt over ``processes`` processes."""

    matrices: list[MatrixCost]
    device: str
    processes: int
    batched: bool
    calibration: Calibration
    per_process_s: list[float] = field(default_factory=list)  # kernel seconds of each process
    startup_s: float = 0.0

    @property
    def flops(self) -> float:
        return sum(m.flops for m in self.matrices)

    @property
    def bytes_read(self) -> int:
        return sum(m.bytes_read for m in self.matrices)

    @property
    def kernel_s(self) -> float:
        """Predicted seconds of the decompositions (the slowest process)."""
        return max(self.per_process_s, default=0.0)

    @property
    def wall_s(self) -> float:
        """Predicted whole process: start-up + the slowest process's decompositions."""
        return self.startup_s + self.kernel_s


def matrix_flops(shape: tuple[int, int], *, top_k: int = 0, precision: str = "float32") -> float:
    """FLOPs of one decomposition as the engine runs it (see the module docstring)."""
    rows, cols = shape
    big, small = float(max(rows, cols)), float(min(rows, cols))
    if precision == "float64":
        flops = max(4 * big * small**2 - _EIGVALSH_FLOPS * small**3, 0.0)
        return flops * (_SVD_VECTOR_FACTOR if top_k else 1.0)
    gram = 2 * big * small**2 * (_BLOCKED_GRAM_FRACTION if small >= 256 else 1.0)
    if top_k:
        return gram + _vector_flops(small, top_k) + 2 * big * small * min(top_k, small)
    return gram + _EIGVALSH_FLOPS * small**3


def _vector_flops(small: float, top_k: int) -> float:
    """FLOPs of the Gram eigenvectors: eigh, or eigvalsh plus the filter's block products."""
    if small < FILTER_MIN_SIZE:
        return _EIGH_FLOPS * small**3
    return _EIGVALSH_FLOPS * small**3 + _FILTER_DEGREES * 2 * small**2 * (2 * min(top_k, small) + BLOCK_EXTRA)


def matrix_seconds(shape: tuple[int, int], calibration: Calibration, *, top_k: int = 0,
                   precision: str = "float32") -> float:
    """Predicted seconds of one decomposition (reading and metrics included) at ``calibration``'s rates."""
    rows, cols = shape
    big, small = float(max(rows, cols)), float(min(rows, cols))
    c = calibration
    convert = big * small * 4 / c.convert_bytes_per_s
    if precision == "float64":
        solve = big * small**2 * c.svd_s_per_mn2 * (_SVD_VECTOR_FACTOR if top_k else 1.0)
        return convert + solve + c.matrix_overhead_s
    gram = 2 * big * small**2 * (_BLOCKED_GRAM_FRACTION if small >= 256 else 1.0) / c.gemm_flops_per_s
    if top_k and small < FILTER_MIN_SIZE:
        solve = small**3 * c.eigh_s_per_n3 + 2 * big * small * min(top_k, small) / c.gemm_flops_per_s
    elif top_k:
        block_products = _FILTER_DEGREES * 2 * small**2 * (2 * min(top_k, small) + BLOCK_EXTRA)
        solve = small**3 * c.eigvalsh_s_per_n3 + (block_products + 2 * big * small * min(top_k, small)) / c.gemm_flops_per_s
    else:
        solve = small**3 * c.eigvalsh_s_per_n3
    return convert + gram + solve + c.matrix_overhead_s


def plan_cost(specs: Sequence[MatrixSpec], pairs: Sequence[AlignmentPair], calibration: Calibration, *,
              device: str, top_k: int = 0, precision: str = "float32", alignment_k: int = 100,
              batched: bool = False, processes: int = 1, bytes_of: dict[str, int] | None = None,
              local_processes: int | None = None) -> PlanCost:
    """The cost of decomposing ``specs`` (and aligning ``pairs``), dealt over ``processes``.

    ``bytes_of``: stored bytes per matrix name (from the headers). ``local_processes``: processes that
    share this machine's CPU cores (default: all of them, when the device is a CPU).
    """
    from hf_spectral.batching import work_units
    from hf_spectral.engine import deal_by_cost

    processes = max(1, processes)
    scale = 1.0
    if device.startswith("cpu") and processes > 1:
        local = local_processes or processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // local)  # engine._cpu_threads_for gives each process its share
        scale = calibration.threads / threads if threads < calibration.threads else 1.0
    bytes_of = bytes_of or {}
    units = work_units(specs, batched=batched, top_k=top_k, num_processes=processes)
    unit_of = {i: u for u, members in enumerate(units) for i in members}
    speedup = calibration.batched_speedup if batched else 1.0
    rows: list[MatrixCost] = []
    for i, spec in enumerate(specs):
        alone = len(units[unit_of[i]]) == 1
        seconds = matrix_seconds(spec.shape, calibration, top_k=top_k, precision=precision) * scale
        rows.append(MatrixCost(spec.name, spec.shape, spec.dtype, matrix_flops(spec.shape, top_k=top_k, precision=precision),
                               bytes_of.get(spec.name, 0), seconds if alone else seconds / speedup, unit_of[i]))
    by_name = {spec.name: spec for spec in specs}
    for j, pair in enumerate(pairs):
        shapes = [by_name[pair.prev.matrix].shape, by_name[pair.next.matrix].shape]
        k = max(1, alignment_k)
        rows.append(MatrixCost(
            f"alignment {pair.label}", shapes[0], "", sum(matrix_flops(s, top_k=k, precision=precision) for s in shapes),
            0, sum(matrix_seconds(s, calibration, top_k=k, precision=precision) for s in shapes) * scale, len(units) + j,
        ))
    unit_seconds = [0.0] * (len(units) + len(pairs))
    for row in rows:
        unit_seconds[row.unit] += row.seconds
    # The engine deals by m·n·min(m, n) (its cost proxy); the per-process loads are in seconds.
    proxies = [sum(specs[i].cost for i in members) for members in units]
    proxies += [by_name[p.prev.matrix].cost + by_name[p.next.matrix].cost for p in pairs]
    dealt = deal_by_cost(proxies, processes)
    per_process = [sum(unit_seconds[u] for u in mine) for mine in dealt]
    return PlanCost(rows, device, processes, batched, calibration, per_process, startup_s=calibration.startup_s)


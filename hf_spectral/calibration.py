"""How fast this machine runs the analyzer's kernels: a short micro-benchmark, cached per device.

The cost model (``hf_spectral.cost``) turns FLOPs and bytes into seconds with these rates, and the
engine asks ``batching_wins`` whether one batched call beats a loop on a device. The benchmark runs
once per (device, torch threads, torch version) and takes about a second on a CPU; its result is
kept in ``$HF_SPECTRAL_CACHE/calibration`` (see ``caches.cache_root``; ``off`` disables the cache,
and then it runs once per process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

CALIBRATION_VERSION = 2
_GEMM_SHAPE = (2048, 768)  # tall side x short side of the probe Gram product (GPT-2 small: 3072 x 768)
_EIG_SIZE = 768  # per-n³ rates fall with n (caches, O(n²) parts): larger matrices are overestimated
_BATCH_PROBE = (16, 384, 128)  # (matrices, rows, cols): many small same-shaped matrices
_REPEATS = 2


@dataclass(frozen=True)
class Calibration:
    """Measured rates of one device (float64 kernels, as the analyzer runs them).

    gemm_flops_per_s:  float64 matrix product (the Gram matrix TᵀT).
    eigvalsh_s_per_n3: seconds per n³ of a symmetric eigenvalue solve, values only.
    eigh_s_per_n3:     the same with eigenvectors (``--top-k``).
    svd_s_per_mn2:     seconds per m·n² of a float64 ``svdvals`` (``--dtype float64``), m ≥ n.
    convert_bytes_per_s: reading a stored float32 matrix into float64 (mmap'd pages, warm cache).
    matrix_overhead_s: fixed cost per matrix (Python, metrics, small launches).
    batched_speedup:   loop time / batched time of many small same-shaped Gram decompositions.
    startup_s:         a fresh interpreter importing the torch backend's analyze path (torch, pandas, accelerate, ...);
    startup_numpy_s:   the same for the numpy backend (no torch, no accelerate: ``engine.compute_backend``).
    load:              the 1-minute load average while measuring, and ``cores``: a busy shared machine
                       measures slow rates (``calibration_for(refresh=True)`` / ``--recalibrate`` redoes it).
    """

    device: str
    threads: int
    torch_version: str
    gemm_flops_per_s: float
    eigvalsh_s_per_n3: float
    eigh_s_per_n3: float
    svd_s_per_mn2: float
    convert_bytes_per_s: float
    matrix_overhead_s: float
    batched_speedup: float
    startup_s: float
    load: float
    cores: int
    measured_at: str
    seconds: float  # how long the benchmark itself took
    startup_numpy_s: float = 0.0  # after the rest: caches written before the numpy backend read as unmeasured

    def startup_for(self, backend: str) -> float:
        """Start-up seconds of an analyze process on ``backend`` (``numpy`` or ``torch``)."""
        return self.startup_numpy_s if backend == "numpy" else self.startup_s


def device_key(device: torch.device) -> str:
    """What makes two devices comparable: the CPU thread count, or the GPU's name."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:threads={torch.get_num_threads()}"


def calibration_for(device: torch.device | str, *, refresh: bool = False, startup: bool = False) -> Calibration:
    """The rates of ``device``: read from the cache, else (or with ``refresh``) measured and cached.

    Measuring the kernels takes about a second on a quiet CPU. ``startup``: also know the start-up
    seconds of a fresh ``analyze`` process on either backend (measured once by starting interpreters,
    ~1-3 s more; only cost estimates need it, the engine's batching choice does not)."""
    device = torch.device(device)
    path = _cache_path(device)
    found = None if refresh else _read(path)
    measured = found or measure(device)
    if startup and measured.startup_s <= 0:
        measured = replace(measured, startup_s=startup_seconds("torch"))
    if startup and measured.startup_numpy_s <= 0:
        measured = replace(measured, startup_numpy_s=startup_seconds("numpy"))
    if path is not None and measured is not found:
        _write(path, measured)
    return measured


_MEMO: dict[str, float] = {}


def batching_wins(device: torch.device) -> bool:
    """Whether stacking same-shaped matrices into one batched call was faster on this device.

    Read from the full calibration when there is one, else only the batching probe is measured (a few
    hundredths of a second: the first analysis on a machine does not pay for the whole benchmark)."""
    device = torch.device(device)
    key = device_key(device)
    if key not in _MEMO:
        found = _read(_cache_path(device))
        if found is not None:
            _MEMO[key] = found.batched_speedup
        else:
            path = _cache_path(device, "batching")
            speedup = None
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
                speedup = float(json.loads(path.read_text())["batched_speedup"])  # type: ignore[union-attr]
            if speedup is None:
                speedup = measure_batching(device)
                if path is not None:
                    _write_json(path, {"batched_speedup": speedup, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
            _MEMO[key] = speedup
    return _MEMO[key] > 1.1  # a tie keeps the simpler loop


def measure_batching(device: torch.device) -> float:
    """Loop time ÷ batched time of many small same-shaped decompositions on ``device``."""
    from hf_spectral.metrics import singular_values, singular_values_batch

    count, m, n = _BATCH_PROBE
    probes = list(torch.randn(count, m, n, generator=torch.Generator().manual_seed(1)).to(device).unbind(0))
    loop_s = _best(lambda: [singular_values(p) for p in probes], device)
    return loop_s / _best(lambda: singular_values_batch(probes), device)


def measure(device: torch.device) -> Calibration:
    """Run the micro-benchmark on ``device`` (float64 Gram product, eigensolvers, SVD, conversion)."""
    from hf_spectral.metrics import singular_values

    started = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    rows, cols = _GEMM_SHAPE
    tall32 = torch.randn(rows, cols, generator=gen).to(device)
    tall = tall32.to(torch.float64)
    gemm_s = _best(lambda: tall.mT @ tall, device)
    sym = (tall.mT @ tall)[:_EIG_SIZE, :_EIG_SIZE].contiguous()
    eigvalsh_s = _best(lambda: torch.linalg.eigvalsh(sym), device)
    half = sym[: _EIG_SIZE // 2, : _EIG_SIZE // 2].contiguous()  # eigh is slower: measured on a quarter of the work
    eigh_s = _best(lambda: torch.linalg.eigh(half), device) * 8
    svd_s = _best(lambda: torch.linalg.svdvals(tall[:1024, :256]), device)
    convert_s = _best(lambda: tall32.to(torch.float64), device)
    small = torch.randn(64, 32, generator=gen).to(device)
    overhead_s = _best(lambda: singular_values(small), device)
    return Calibration(
        device=device_key(device), threads=torch.get_num_threads(), torch_version=torch.__version__,
        gemm_flops_per_s=2.0 * rows * cols * cols / gemm_s,
        eigvalsh_s_per_n3=eigvalsh_s / _EIG_SIZE**3,
        eigh_s_per_n3=eigh_s / _EIG_SIZE**3,
        svd_s_per_mn2=svd_s / (1024 * 256**2),
        convert_bytes_per_s=tall32.numel() * 4 / convert_s,
        matrix_overhead_s=overhead_s,
        batched_speedup=measure_batching(device),
        startup_s=0.0,  # measured when an estimate asks (calibration_for(startup=True))
        load=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        seconds=round(time.perf_counter() - started, 3),
    )


def startup_seconds(backend: str = "torch") -> float:
    """Wall seconds of a fresh interpreter that imports what ``hf-spectral analyze`` imports on ``backend``
    (torch's also imports torch and accelerate)."""
    code = "import hf_spectral.cli.analyze, hf_spectral.analyzer, hf_spectral.engine, hf_spectral.store"
    if backend != "numpy":
        code += ", accelerate"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=300)
    return time.perf_counter() - start if done.returncode == 0 else 0.0


def _best(run: Callable[[], object], device: torch.device) -> float:
    """Fastest of a few runs (the first warms caches and kernels up): the least disturbed by a shared machine."""
    times = []
    for _ in range(_REPEATS + 1):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return max(min(times[1:]), 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_path(device: torch.device, kind: str = "rates") -> Path | None:
    from hf_spectral.caches import cache_root

    root = cache_root()
    if root is None:
        return None
    key = json.dumps([CALIBRATION_VERSION, device_key(device), torch.__version__])
    return root / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.{kind}.json"


def _read(path: Path | None) -> Calibration | None:
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Calibration(**json.loads(path.read_text()))
    return None


def _write(path: Path, calibration: Calibration) -> None:
    _write_json(path, asdict(calibration))


def _write_json(path: Path, value: dict) -> None:
    from hf_spectral.atomic import atomic_file

    with contextlib.suppress(OSError):  # a cache that cannot be written only costs a re-measurement
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(value, indent=1))

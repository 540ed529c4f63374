"""Spectral snapshots off the training thread: one worker thread, at most one snapshot in flight.

At a due step the training thread copies the planned weights to the CPU (``Recorder.freeze``) and hands
them to the worker, which decomposes them, turns them into scalars and writes the snapshot
(``Recorder.compute``) while training goes on; the training thread takes the result at its next event
(``Recorder.accept``). Whether it runs at all is :func:`use_background`'s decision.

Threads (measured with torch 2.13, OpenMP build: docs/tracking.md "Snapshots in the background"): a new
Python thread runs its torch ops with the training's ``torch.get_num_threads()`` (torch applies the
process-wide count to each thread when it first runs a parallel op) in an OpenMP team of its own, so the
worker uses as many cores as one training step, and never more. The worker must not call
``torch.set_num_threads``: that writes the process-wide count, which every thread adopts when it first
computes. So the worker is used by default only where that many cores are idle.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from hf_spectral.engine import AnalysisOptions, launched_processes, process_state, resolve_device
from hf_spectral.errors import SpectralError
from hf_spectral.processes import CoreSplit, usable_cores
from hf_spectral.tracking.recorder import ComputedSnapshot, FrozenSnapshot
from hf_spectral.utils.logging import get_logger

logger = get_logger("hf_spectral.tracking")

BackgroundSpec = bool | str  # True, False or "auto"
# The copy of the weights handed to the worker may take at most this share of the available memory.
MEMORY_SHARE = 0.25
# Matrices decomposed side by side while training waits (waiting_threads, waiting_split): each holds a float64
# copy of its matrix, and beyond a few the threads of one snapshot mostly wait on memory bandwidth.
MAX_WAITING_THREADS = 4


def parse_background(value: BackgroundSpec) -> BackgroundSpec:
    """``True``, ``False`` or ``"auto"`` (also ``"on"`` / ``"off"``); anything else is a ``SpectralError``."""
    if isinstance(value, bool):
        return value
    words = {"auto": "auto", "on": True, "off": False, "true": True, "false": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise SpectralError(f"SpectralCallback background={value!r}: use True, False or \"auto\"")


def idle_cores() -> int:
    """Cores this process may use beyond those the training's torch threads take."""
    return usable_cores() - torch.get_num_threads()


def waiting_threads(world_size: int = 1) -> int:
    """Threads that decompose the last step's snapshot side by side when the worker is on (the worker's
    cores are idle then, and the training's): one per team of the training's torch threads that the cores
    hold, at most ``MAX_WAITING_THREADS``; 1 with several processes."""
    if _processes(world_size) > 1:
        return 1
    return max(1, min(MAX_WAITING_THREADS, usable_cores() // torch.get_num_threads()))


def waiting_split(world_size: int = 1) -> CoreSplit:
    """How a snapshot computed on the training thread, which waits for it, shares the cores: those training
    computes on (torch's thread count; never more, so that a machine shared with other jobs — a sweep, test
    workers — is not oversubscribed), as ``min(MAX_WAITING_THREADS, count)`` matrices side by side with
    ``count // that`` torch threads each (nothing else computes meanwhile, so the count may change for the
    while). Nothing changed with several processes (``processes.cpu_threads_for`` splits the cores)."""
    count = torch.get_num_threads()
    if _processes(world_size) > 1 or count <= 1:
        return CoreSplit()
    side_by_side = min(MAX_WAITING_THREADS, count)
    return CoreSplit(side_by_side, max(1, count // side_by_side))


def _processes(world_size: int) -> int:
    """Processes of this run: the Trainer's world size, or those launched together."""
    return max(world_size, launched_processes())


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo); None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def copy_bytes(model: nn.Module) -> int:
    """Bytes of a copy of the weights a snapshot reads (the parameters with 2 or more dimensions)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() >= 2)


def use_background(requested: BackgroundSpec, model: nn.Module, options: AnalysisOptions, *, world_size: int,
                   live: bool, truncation_eval: bool) -> bool:
    """Whether snapshots are computed off the training thread.

    Never (``True`` warns and falls back) with several processes (the engine deals matrices over them with
    collectives, which must not run beside DDP's), with ``truncation_eval`` (it evaluates the live model
    through the Trainer), for a sharded model (snapshots come from checkpoints), when the analysis runs
    on an accelerator, or when the CPU copy of the weights would take more than ``MEMORY_SHARE`` of the
    available memory. ``"auto"`` also needs room for the worker: as many idle cores as the training's torch
    threads (the worker runs with that count), or the model training on an accelerator (the CPU is free).
    """
    if requested is False:
        return False
    unsafe = _unsafe(options, world_size=world_size, live=live, truncation_eval=truncation_eval) or _too_big(model)
    if unsafe:
        if requested is True:
            logger.warning("hf_spectral: background=True but %s; snapshots are taken on the training thread", unsafe)
        return False
    if requested is True:
        return True
    on_accelerator = any(p.device.type != "cpu" for p in model.parameters())
    if not on_accelerator and idle_cores() < torch.get_num_threads():
        logger.info("hf_spectral: snapshots on the training thread: %d idle core(s) for a worker that would run "
                    "%d torch thread(s)", max(0, idle_cores()), torch.get_num_threads())
        return False
    return True


def _unsafe(options: AnalysisOptions, *, world_size: int, live: bool, truncation_eval: bool) -> str:
    """Why a worker thread must not compute the snapshots here ("" when it may)."""
    processes = _processes(world_size)
    if processes > 1:
        return f"the run has {processes} processes (the snapshots' collectives must not run beside DDP's)"
    if truncation_eval:
        return "truncation_eval evaluates the live model through the Trainer"
    if not live:
        return "the model is sharded (snapshots come from the saved checkpoints)"
    device = resolve_device(options.device, process_state())
    if device.type != "cpu":
        return f"the analysis runs on {device} (pass device='cpu' to compute it in the background)"
    return ""


def _too_big(model: nn.Module) -> str:
    """Why the CPU copy of ``model``'s weights must not be made ("" when it may)."""
    needed, available = copy_bytes(model), available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        return (f"a CPU copy of the weights ({needed / 2**30:.1f} GiB) would take more than {MEMORY_SHARE:.0%} of "
                f"the available memory ({available / 2**30:.1f} GiB)")
    return ""


class SnapshotWorker:
    """One worker thread computing at most one snapshot at a time (``compute`` must not raise: a
    failure is a warning and None; anything it lets through is caught here, logged, and dropped)."""

    def __init__(self, compute: Callable[[FrozenSnapshot], ComputedSnapshot | None]) -> None:
        self._compute = compute
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_spectral_snapshot")
        self._future: Future | None = None
        self._held: FrozenSnapshot | None = None  # handed over, to be started by release()
        self.pending_step: int | None = None  # the step in flight (or held)
        self._submitted = 0.0  # perf_counter when it was started

    def submit(self, frozen: FrozenSnapshot, *, hold: bool = False) -> None:
        """Start computing ``frozen`` (the previous one must have been taken); ``hold``: only at
        :meth:`release` (or a ``take`` that waits)."""
        if self._future is not None or self._held is not None:
            raise RuntimeError("SnapshotWorker: a snapshot is still in flight; take() it first")
        self.pending_step = frozen.step
        if hold:
            self._held = frozen
        else:
            self._start(frozen)

    def release(self) -> None:
        """Start the snapshot that ``submit(hold=True)`` held back, if any."""
        if self._held is not None:
            frozen, self._held = self._held, None
            self._start(frozen)

    def _start(self, frozen: FrozenSnapshot) -> None:
        self._future = self._pool.submit(self._compute, frozen)
        self._submitted = time.perf_counter()

    def elapsed(self) -> float | None:
        """Seconds the snapshot in flight has been computing; None when the worker is idle (or done)."""
        if self._future is None or self._future.done():
            return None
        return time.perf_counter() - self._submitted

    def take(self, wait: bool) -> ComputedSnapshot | None:
        """The computed snapshot in flight: None when there is none, when it failed, or (``wait`` False)
        when it is not done yet."""
        if wait:
            self.release()
        future = self._future
        if future is None or (not wait and not future.done()):
            return None
        self._future, step, self.pending_step = None, self.pending_step, None
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            logger.warning("hf_spectral: spectral snapshot at step %s skipped: the worker failed: %s: %s",
                           step, type(exc).__name__, exc)
            return None

    def close(self) -> None:
        """Wait for the snapshot in flight (if any; one held back is dropped) and end the thread."""
        self._held = None
        self._pool.shutdown(wait=True)

"""How many torch CPU threads a small recipe should train with: as many as there are idle cores.

Measured on the grokking demo (docs/grokking.md, "Threads"): on 2 idle cores two threads make a step
1.85x faster than one; when another job holds one of the cores, two OpenMP threads make it ~6x
*slower* than one (the threads wait for each other at every barrier). So the choice is taken by
measurement when the run starts: the idle CPU time over a short interval (``/proc/stat``), not the
load average, which lags a minute behind (a just-finished ``pip install`` would count as busy).
"""

from __future__ import annotations

import os
import time

from hf_spectral.utils import logging

logger = logging.get_logger(__name__)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies summed over all CPUs, or None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already counted in user


def idle_cores(interval: float = 0.3) -> float | None:
    """How many of this machine's cores were idle during the next ``interval`` seconds (None: unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    total = second[1] - first[1]
    if total <= 0:
        return None
    return (os.cpu_count() or 1) * (second[0] - first[0]) / total


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(requested: int = 0, world_size: int = 1, idle: float | None = None) -> int:
    """``requested`` when > 0; else (auto) the idle cores, rounded, shared among ``world_size``
    processes, at least 1 and at most the usable cores. ``idle``: the measured idle cores
    (:func:`idle_cores` when None; unmeasurable → all usable cores)."""
    if requested > 0:
        return requested
    usable = usable_cores()
    if world_size > 1:  # the other processes start at the same moment: a measurement would miss them
        return max(1, usable // world_size)
    idle = idle_cores() if idle is None else idle
    if idle is None:
        return usable
    return max(1, min(usable, int(idle + 0.5)))


def set_cpu_threads(requested: int = 0, world_size: int = 1) -> int:
    """Set torch's intra-op threads by :func:`choose_threads`; return the number (logged when auto)."""
    import torch

    threads = choose_threads(requested, world_size)
    torch.set_num_threads(threads)
    if requested <= 0:
        logger.info("torch CPU threads: %d (auto: the idle cores when the run started; --num_threads N to set)", threads)
    return threads

"""Devices and processes: accelerate's process state (or, for a process not launched with others, a
stand-in that needs neither accelerate nor torch), which device ``auto`` means, and the CPU cores
split between the processes of one machine."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

from hf_spectral._lazy import LazyModule
from hf_spectral.errors import SpectralError

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: a lone CPU process on the numpy backend never needs it


class _OneProcess:
    """accelerate's ``PartialState`` as the engine uses it, for a process not launched with others:
    counts without importing accelerate (which imports torch); the device is accelerate's, asked on use."""

    num_processes = 1
    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    @property
    def device(self) -> Any:
        return _accelerate_state().device

    def wait_for_everyone(self) -> None:
        """One process: nobody to wait for."""


_ONE_PROCESS = _OneProcess()


def process_state() -> Any:
    """The accelerate ``PartialState`` of this process, or, for a process not launched with others
    while nothing made accelerate's state, a stand-in with the same counts (``_OneProcess``)."""
    accelerate = sys.modules.get("accelerate.state")
    made = accelerate is not None and bool(accelerate.PartialState._shared_state)
    if launched_processes() <= 1 and not made:
        return _ONE_PROCESS
    return _accelerate_state()


def _accelerate_state() -> Any:
    """The accelerate ``PartialState`` of this process (one process when not launched).

    Made on first use, unless a Trainer or ``Accelerator`` made it already. A CPU-only machine
    launched with several processes (``accelerate launch --multi_gpu`` / ``torchrun``) gets a CPU
    (gloo) process group: plain ``PartialState()`` would see no accelerator and run every process
    alone on the whole model. ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``) is honoured.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    _leave_group_at_exit()
    if PartialState._shared_state:  # already made: its settings stand
        return PartialState()
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    if not cpu and launched_processes() > 1:
        accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        cpu = accelerator is None or accelerator.type == "mps"  # accelerate distributes no MPS
    return PartialState(cpu=cpu)


@functools.cache
def _leave_group_at_exit() -> None:
    """Destroy the process group when the interpreter exits (registered once). A gloo group left to the
    interpreter's tear-down sometimes aborts a process whose work is done ("terminate called without an
    active exception", SIGABRT, exit code -6), failing a launch that succeeded."""
    import atexit

    def leave() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group()
            except Exception:  # noqa: BLE001 - exiting anyway; the group may be half torn down
                pass

    atexit.register(leave)



def launched_processes() -> int:
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def resolve_device(device: str, state: Any | None = None) -> torch.device:
    """``auto`` → the accelerate process's device (CUDA when available), else the named device."""
    if device == "auto":
        if state is not None:
            resolved = torch.device(state.device)
        else:
            resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # accelerate names the CPU of a multi-CPU run ``cpu:0``: one CPU device for every process
        return torch.device("cpu") if resolved.type == "cpu" else resolved
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise SpectralError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SpectralError(f"device {device!r} asked for but CUDA is not available here; use --device cpu or auto")
    if resolved.type == "cuda" and state is not None and state.num_processes > 1 and resolved.index is None:
        return torch.device(state.device)
    return resolved


@contextlib.contextmanager
def cpu_threads_for(state: Any, device: torch.device) -> Iterator[None]:
    """Split the cores between the processes of this machine while they decompose on the CPU.

    Several processes each running all-core OpenMP slowed SVDs more than 10x in one measurement;
    launchers set OMP_NUM_THREADS=1 instead, which leaves cores idle.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    local_processes = int(local) if local.isdigit() else state.num_processes
    if device.type != "cpu" or state.num_processes <= 1 or local_processes <= 1:
        yield
        return
    with with_torch_threads(max(1, usable_cores() // local_processes)):
        yield


class CoreSplit(NamedTuple):
    """How one snapshot's matrices share the cores: ``side_by_side`` decomposed at once, each with
    ``torch_threads`` torch threads (None: torch's count as it is)."""

    side_by_side: int = 1
    torch_threads: int | None = None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def with_torch_threads(count: int | None) -> Iterator[None]:
    """torch's thread count (process-wide) set to ``count`` inside, restored after; None leaves it alone."""
    before = torch.get_num_threads() if count is not None else None
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_cpu(device: str, state: Any) -> bool:
    """Whether ``device`` is the CPU; for ``auto`` in a lone process, without importing torch when it is not."""
    if device in ("auto", "cpu") and isinstance(state, _OneProcess) and "torch" not in sys.modules:
        return device == "cpu" or not torch_build_has_accelerator()
    return resolve_device(device, state).type == "cpu"


@functools.cache
def torch_build_has_accelerator() -> bool:
    """Whether the installed torch could drive a GPU: built for CUDA, ROCm or XPU (its ``version.py``
    says, read as text: importing torch to ask is the ~0.8 s the numpy backend spares), or on macOS
    (MPS). When the file cannot tell, True: torch decides."""
    if sys.platform == "darwin":
        return True
    try:
        spec = importlib.util.find_spec("torch")
        text = (Path(spec.origin).parent / "version.py").read_text()
    except (AttributeError, TypeError, ValueError, ImportError, OSError):
        return True
    builds = dict(re.findall(r"^(cuda|hip|rocm|xpu)\b[^=\n]*=\s*(.+?)\s*$", text, re.MULTILINE))
    return not builds or any(value != "None" for value in builds.values())

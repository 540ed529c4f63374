"""The one SVD path: plan the matrices of a checkpoint or a live model, decompose them on a device,
deal the work over accelerate processes by cost, and gather a ``Snapshot``.

The analyzer, the training callback and the experiments all come through here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from safetensors import SafetensorError

from hf_spectral import metrics
from hf_spectral._lazy import LazyModule
from hf_spectral._version import __version__
from hf_spectral.batching import BATCH_MODES, batchable, work_units
from hf_spectral.errors import SpectralError
from hf_spectral.metrics import PRECISIONS
from hf_spectral.module_cache import module_info_for
from hf_spectral.prefetch import read_ahead
from hf_spectral.processes import (
    cpu_threads_for, launched_processes, on_cpu, process_state, resolve_device, with_torch_threads,
)
from hf_spectral.sources.types import Checkpoint
from hf_spectral.status import FLAG_SVD_FAILED, STATUS_FLAGGED, STATUS_OK, STATUS_SKIPPED, UNDEFINED_FLAGS
from hf_spectral.store import Snapshot, jsonable
from hf_spectral.tensor_info import DTYPE_EPS, TensorInfo, dtype_code
from hf_spectral.utils.logging import tqdm
from hf_spectral.views import (
    alignment_pairs,
    build_matrix,
    compile_patterns,
    config_from_model,
    module_types_from_model,
    plan_matrices,
    rules_for,
    select,
)
from hf_spectral.views.types import AlignmentMode, AlignmentPair, MatrixSlice, MatrixSpec, Reader, SkippedTensor

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

BACKENDS = ("auto", "numpy", "torch")  # what computes the decompositions (compute_backend)
VIEWS = ("paper", "ww")  # how a conv kernel's heavy-tail ESD is formed (docs/heavy_tailed.md)
CONV_KINDS = ("conv", "conv_transpose")


@dataclass
class AnalysisOptions:
    """How to analyze: which matrices, what to keep, where and how precisely to compute.

    include / exclude: regexes (``re.search``) on matrix names; several may be given.
    top_k:      keep the top-k left/right singular vectors of every matrix (0 = singular values only).
    device:     ``auto`` (the accelerate process's device, CUDA when available), ``cpu``, ``cuda``, ``cuda:1``.
    precision:  ``float32`` (default; singular values within 1e-4·σ_max, in practice ~1e-8) or ``float64``.
    alignment:  also compute consecutive-layer alignment (needs full decompositions of paired layers).
    alignment_k: how many diagonal entries of each alignment matrix to keep.
    progress:   show a progress bar on the main process.
    heavy_tail: also compute the heavy-tailed (WeightWatcher-style) metrics of every ESD: α, xmin, D,
                alpha_weighted, log norms, MP soft rank (``metrics.HEAVY_TAIL_METRICS``).
    view:       ESD of a 2-D conv kernel for those metrics: ``paper`` (the flattened (out, in·k·k)
                matrix, as every other metric) or ``ww`` (weightwatcher's: the k·k (out × in) slices pooled, λ/2).
    batch:      ``auto`` (batch same-shaped matrices where the device measured faster batched: see
                ``hf_spectral.calibration``), ``on`` or ``off``. Results agree to rounding either way.
    backend:    ``auto`` (numpy's LAPACK where it can do the whole analysis on the CPU, which spares
                importing torch; else torch: see ``compute_backend``), ``numpy`` or ``torch``. Results
                agree to rounding either way.
    """

    include: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    top_k: int = 0
    device: str = "auto"
    precision: str = "float32"
    alignment: bool = False
    alignment_k: int = 100
    progress: bool = True
    heavy_tail: bool = False
    view: str = "paper"
    batch: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SpectralError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.batch not in BATCH_MODES:
            raise SpectralError(f"unknown batch mode {self.batch!r}; use one of {', '.join(BATCH_MODES)}")
        compile_patterns(self.include, "include")
        compile_patterns(self.exclude, "exclude")
        if self.view not in VIEWS:
            raise SpectralError(f"unknown view {self.view!r}; use one of {', '.join(VIEWS)}")
        if self.view != "paper" and not self.heavy_tail:
            raise SpectralError(f"view {self.view!r} only changes the heavy-tail metrics; "
                                "ask for them too (--metrics heavy_tail, heavy_tail=True)")
        if self.precision not in PRECISIONS:
            raise SpectralError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.top_k < 0:
            raise SpectralError(f"top_k must be >= 0, got {self.top_k}")

    def to_meta(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("progress")
        out.pop("batch")  # how the work is grouped, not what is computed: snapshots (and cache keys) match
        out.pop("backend")  # likewise: which library's LAPACK computes the same numbers
        return out


@dataclass
class Plan:
    """What will be computed: matrices with their readers, skipped tensors, alignment pairs."""

    specs: list[MatrixSpec]
    readers: dict[str, Reader]  # matrix name -> read(tensor name) for its part
    skipped: list[SkippedTensor]
    pairs: list[AlignmentPair] = field(default_factory=list)
    components: dict[str, str] = field(default_factory=dict)  # matrix name -> component
    model_types: dict[str, str] = field(default_factory=dict)  # component -> model_type / class
    # matrix name -> read(tensor name) as a numpy array, for the single stored tensors numpy can read
    array_readers: dict[str, Reader] = field(default_factory=dict)

    @property
    def total_cost(self) -> float:
        return sum(spec.cost for spec in self.specs)


# --------------------------------------------------------------------------------------------------
# Planning


@dataclass
class _Part:
    """One model to plan: a checkpoint part, or a live model."""

    component: str
    config: dict[str, Any] | None
    infos: list[TensorInfo]
    read: Reader
    module_types: dict[str, str] | None = None
    buffers: set[str] = field(default_factory=set)
    shares_storage: bool = False  # the same tensor may be stored under several names (torch .bin)
    arrays: Any = None  # a reader with read_array / can_read_array (SafetensorsReader): the numpy backend's

    @property
    def prefix(self) -> str:
        return f"{self.component}/" if self.component else ""


def plan_checkpoint(checkpoint: Checkpoint, options: AnalysisOptions) -> Plan:
    """Plan from file headers only: no tensor data is read."""
    parts = []
    for part in checkpoint.parts:
        # A family the registry knows completely is planned from its names: building the model on the meta
        # device would import its modeling code (~2.5 s for GPT-2) to learn what the registry already says.
        complete = rules_for(part.config).complete
        module_info = module_info_for(part.config) if part.config and not complete else None
        parts.append(_Part(
            part.component, part.config, part.reader.tensors(), part.reader.read,
            module_types=module_info[0] if module_info else None, buffers=module_info[2] if module_info else set(),
            shares_storage=getattr(part.reader, "shares_storage", False),
            arrays=part.reader if hasattr(part.reader, "read_array") else None,
        ))
    return _plan_parts(parts, options, where=str(checkpoint.path))


def plan_model(model: torch.nn.Module, options: AnalysisOptions) -> Plan:
    """Plan the live parameters of ``model`` (unwrapped); reading is a no-copy ``detach``."""
    module_types, _order, buffers = module_types_from_model(model)
    params = dict(model.named_parameters())
    # torch.nn.utils.prune keeps the weight as ``X_orig`` (a parameter) × ``X_mask`` (a buffer): both are
    # planned, so the live model is analyzed as the masked weight its forward pass uses.
    masks = {n: b for n, b in model.named_buffers() if n.endswith("_mask") and f"{n[:-len('_mask')]}_orig" in params}
    tensors = {**params, **masks}
    infos = [TensorInfo(name, tuple(p.shape), dtype_code(p.dtype)) for name, p in tensors.items()]

    def read(name: str) -> torch.Tensor:
        return tensors[name].detach()

    # named_parameters() lists a tied parameter once: no tie detection needed
    part = _Part("", config_from_model(model), infos, read, module_types=module_types, buffers=set(buffers))
    return _plan_parts([part], options, where=type(model).__name__)


def frozen_plan(plan: Plan) -> Plan:
    """``plan`` reading CPU copies of the tensors its matrices are built from, taken now.

    The copies are detached and owned (never views of a live parameter), so the plan can be run
    later, in another thread, while the live model goes on changing: it computes the weights of this
    moment. Only the planned tensors are copied (no buffers, no optimizer state).
    """
    copies: dict[str, torch.Tensor] = {}
    readers: dict[str, Reader] = {}
    for spec in plan.specs:
        read = plan.readers[spec.name]
        for name in spec.tensors:
            if name not in copies:
                copies[name] = read(name).detach().to("cpu", copy=True)
        readers[spec.name] = copies.__getitem__
    return replace(plan, readers=readers, array_readers={})


def _plan_parts(parts: list[_Part], options: AnalysisOptions, where: str) -> Plan:
    specs: list[MatrixSpec] = []
    skipped: list[SkippedTensor] = []
    readers: dict[str, Reader] = {}
    array_readers: dict[str, Reader] = {}
    components: dict[str, str] = {}
    model_types: dict[str, str] = {}
    part_specs: list[tuple[dict | None, list[MatrixSpec]]] = []
    for part in parts:
        found, left_out = plan_matrices(part.infos, config=part.config, module_types=part.module_types,
                                        buffers=part.buffers, prefix=part.prefix)
        if part.shares_storage:
            found, left_out = _drop_tied(found, left_out, part.read)
        specs += found
        skipped += left_out
        part_specs.append((part.config, found))
        for spec in found:
            readers[spec.name] = part.read
            components[spec.name] = part.component
            if part.arrays is not None and not spec.composed and all(part.arrays.can_read_array(t) for t in spec.tensors):
                array_readers[spec.name] = part.arrays.read_array
        model_types[part.component] = _model_type(part.config)
    if not specs:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
        raise SpectralError(
            f"{where}: no weight matrix to analyze (no tensor with 2 or more float dimensions"
            f"{'; skipped ' + reasons if reasons else ''}): pass a model's weights"
        )
    try:
        # Filter the union of all parts: with several pipeline components a pattern may rightly
        # select nothing in one of them, and the error must list the matrices of every part.
        kept, skipped = select(specs, skipped, include=options.include, exclude=options.exclude, strict=True)
    except SpectralError as exc:
        raise SpectralError(f"{where}: {exc}") from None
    names = {spec.name for spec in kept}
    pairs: list[AlignmentPair] = []
    if options.alignment:
        for config, found in part_specs:
            chosen = [spec for spec in found if spec.name in names]
            if chosen:
                pairs += alignment_pairs(chosen, config=config)
    readers = {name: read for name, read in readers.items() if name in names}
    components = {name: c for name, c in components.items() if name in names}
    array_readers = {name: read for name, read in array_readers.items() if name in names}
    return Plan(kept, readers, skipped, pairs, components, model_types, array_readers)


def _drop_tied(specs: list[MatrixSpec], skipped: list[SkippedTensor],
               read: Reader) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """Keep the first name of a tensor stored under several names (tied weights in a ``torch.save``
    state dict: an LM head sharing the embedding's storage); later names become skipped rows.

    ``named_parameters()`` lists a tied parameter once (definitions §1); safetensors cannot store
    shared tensors, so only ``.bin`` checkpoints have them. Reading is mmap/no-copy: no data is touched.
    """
    seen: dict[tuple, str] = {}
    kept: list[MatrixSpec] = []
    alive: list[torch.Tensor] = []  # hold every tensor read: a freed storage's address could be reused
    for spec in specs:
        if spec.composed or len(spec.tensors) != 1:
            kept.append(spec)
            continue
        try:
            t = read(spec.tensors[0])
            alive.append(t)
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        except Exception:  # an unreadable tensor fails later with its own one-line error
            kept.append(spec)
            continue
        if key[0] and key in seen:
            skipped.append(SkippedTensor(spec.name, spec.tensor_shape, spec.dtype, f"tied to {seen[key]} (the same stored tensor)"))
            continue
        seen.setdefault(key, spec.name)
        kept.append(spec)
    return kept, skipped


def _model_type(config: dict | None) -> str:
    if not config:
        return ""
    return str(config.get("model_type") or config.get("_class_name") or "")


# --------------------------------------------------------------------------------------------------
# Computing


@dataclass
class _Task:
    index: int
    cost: float
    members: tuple[int, ...] = ()  # indices of the planned matrices of this unit (several: one batch)
    pair: AlignmentPair | None = None


def run_plan(plan: Plan, options: AnalysisOptions, meta: dict[str, Any] | None = None, *,
             alone: bool = False, threads: int = 1, torch_threads: int | None = None) -> Snapshot:
    """Decompose every planned matrix (dealt over accelerate processes) and build the snapshot.

    Every process returns the same gathered snapshot; only callers on the main process should write it.
    A ``SpectralError`` in any process (an unreadable tensor) is raised in every process.
    ``alone``: this process does the whole plan by itself (checkpoints of a sweep dealt over processes).
    ``threads``: on the CPU, decompose this many matrices side by side, each thread with torch's thread
    count, set to ``torch_threads`` for the while (None: as it is). The caller knows that those cores are
    idle (a training waiting for its snapshot) and that no other thread computes while the count is changed.
    """
    state = process_state()
    workers, rank = (1, 0) if alone else (state.num_processes, state.process_index)
    backend = compute_backend(plan, options, state)
    device = NUMPY_DEVICE if backend == "numpy" else resolve_device(options.device, state)
    by_name = {spec.name: spec for spec in plan.specs}
    batched = backend == "torch" and use_batches(options, device, plan.specs)
    units = work_units(plan.specs, batched=batched, top_k=options.top_k, num_processes=workers)
    tasks = [_Task(unit[0], sum(plan.specs[i].cost for i in unit), members=tuple(unit)) for unit in units]
    for pair in plan.pairs:
        cost = by_name[pair.prev.matrix].cost + by_name[pair.next.matrix].cost
        tasks.append(_Task(len(plan.specs) + len(tasks) - len(units), cost, pair=pair))
    mine = [tasks[i] for i in deal_by_cost([t.cost for t in tasks], workers)[rank]]

    def work(task: _Task, loaded: Callable[[], list]) -> list[tuple[int, dict[str, Any]]]:
        if task.pair is not None:
            return [(task.index, align(task.pair, by_name, plan.readers, options, device))]
        if len(task.members) == 1:
            spec = plan.specs[task.index]
            return [(task.index, decompose(spec, plan.readers[spec.name], options, device, loaded()[0]))]
        specs = [plan.specs[i] for i in task.members]
        return list(zip(task.members, decompose_batch(specs, loaded(), options, device)))

    started = time.perf_counter()
    show = options.progress and state.is_main_process
    on_the_cpu = str(device) == "cpu"
    side_by_side = threads if on_the_cpu else 1
    with _computing(backend, state, device), with_torch_threads(torch_threads if on_the_cpu else None):
        bar = tqdm(total=sum(max(1, len(t.members)) for t in mine), desc="SVD", unit="matrix", disable=not show,
                   leave=False)
        results = _run_tasks(mine, work, lambda t: _load_unit(t, plan, options, device, backend), bar,
                             threads=side_by_side, grad_free=backend != "numpy")
        bar.close()
    if workers > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    elapsed = time.perf_counter() - started

    errors = [payload["error"] for index, payload in results if index < 0]
    if errors:
        raise SpectralError(errors[0])
    done = dict(results)
    missing = [i for i in range(len(plan.specs) + len(plan.pairs)) if i not in done]
    if missing:  # pragma: no cover - would be a bug in dealing or gathering
        raise RuntimeError(f"lost {len(missing)} results while gathering from {workers} processes")
    matrix_results = [done[i] for i in range(len(plan.specs))]
    pair_results = [done[i] for i in range(len(plan.specs), len(plan.specs) + len(plan.pairs))]
    snapshot_meta = {
        **(meta or {}),
        "options": options.to_meta(),
        "device": str(device),
        "backend": backend,
        "num_processes": workers,
        "seconds": round(elapsed, 3),
        "model_types": plan.model_types,
        "hf_spectral_version": __version__,
    }
    # JSON types from the start, so that a snapshot read back from disk equals the one computed.
    return _assemble(plan, matrix_results, pair_results, jsonable(snapshot_meta))


Work = Callable[[_Task, Callable[[], list]], list[tuple[int, dict[str, Any]]]]


def _run_tasks(tasks: Sequence[_Task], work: Work, load: Callable[[_Task], list], bar: Any, *, threads: int,
               grad_free: bool) -> list[tuple[int, dict[str, Any]]]:
    """``work`` on every task: in order with the next one read ahead, or on ``threads`` threads side by side
    (the largest first, each thread taking the next when it is done). A ``SpectralError`` ends the thread
    that met it and is reported as ``(-1, {"error": ...})``, not raised: other processes would wait forever
    in the gather."""
    if threads <= 1 or len(tasks) <= 1:
        return _work_through(read_ahead(tasks, load), work, bar, threading.Lock())
    queue = iter(sorted(tasks, key=lambda t: (-t.cost, t.index)))
    lock = threading.Lock()

    def take() -> tuple[_Task, Callable[[], list]] | None:
        with lock:
            task = next(queue, None)
        return None if task is None else (task, lambda: load(task))

    def one_thread() -> list[tuple[int, dict[str, Any]]]:
        with torch.no_grad() if grad_free else contextlib.nullcontext():  # grad mode is per thread
            return _work_through(iter(take, None), work, bar, lock)

    with ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="hf_spectral_svd") as pool:
        others = [pool.submit(one_thread) for _ in range(min(threads, len(tasks)) - 1)]
        results = one_thread()
        for other in others:
            results += other.result()
    return results


def _work_through(items: Iterator[tuple[_Task, Callable[[], list]]], work: Work, bar: Any,
                  lock: threading.Lock) -> list[tuple[int, dict[str, Any]]]:
    results: list[tuple[int, dict[str, Any]]] = []
    for task, loaded in items:
        try:
            done_now = work(task, loaded)
        except SpectralError as exc:
            results.append((-1, {"error": str(exc)}))
            break
        results += done_now
        with lock:
            bar.update(len(done_now))
    return results


def decompose(spec: MatrixSpec, read: Reader, options: AnalysisOptions, device: torch.device,
              matrix: torch.Tensor | None = None) -> dict[str, Any]:
    """Singular values, metrics and (optionally) top-k vectors of one planned matrix (``matrix``: it,
    already read onto ``device``)."""
    if matrix is None:
        matrix = _materialize(spec, read, options.precision).to(device)
    shape = (int(matrix.shape[0]), int(matrix.shape[1]))
    if not all_finite(matrix):
        values = metrics.non_finite_metrics(shape)
        if options.heavy_tail:
            values.update(metrics.undefined_heavy_tail_metrics(metrics.FLAG_NON_FINITE))
        return {"metrics": values, "sigma": None, "vectors": None}
    try:
        if options.top_k:
            result = metrics.decompose(matrix, options.top_k, precision=options.precision)
            # Vectors are kept at the compute precision (float32 halves a snapshot's size).
            dtype = np.float64 if options.precision == "float64" else np.float32
            sigma = result.sigma
            vectors = (result.u.cpu().numpy().astype(dtype), result.v.cpu().numpy().astype(dtype))
        else:
            sigma, vectors = metrics.singular_values(matrix, precision=options.precision), None
    except (RuntimeError, MemoryError) as exc:  # DecompositionError, LinAlgError, out of memory...: this matrix only
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        failed = dict(metrics.non_finite_metrics(shape), flag=f"{FLAG_SVD_FAILED}: {reason}")
        if options.heavy_tail:
            failed.update(metrics.undefined_heavy_tail_metrics(FLAG_SVD_FAILED))
        return {"metrics": failed, "sigma": None, "vectors": None}
    return _spectrum_result(spec, matrix, sigma, vectors, options)


def _spectrum_result(spec: MatrixSpec, matrix: torch.Tensor, sigma: torch.Tensor, vectors: Any,
                     options: AnalysisOptions) -> dict[str, Any]:
    shape = (int(matrix.shape[0]), int(matrix.shape[1]))
    # The noise floor is the computation's precision, not the stored dtype's: a bf16 weight is exact once
    # upcast (metrics.spectrum's module docstring says why).
    eps = DTYPE_EPS["F64" if options.precision == "float64" else "F32"]
    values = metrics.spectrum_metrics(sigma, shape, eps=eps)
    if options.heavy_tail:
        values.update(heavy_tail(spec, matrix, sigma, eps, options.view))
    return {"metrics": values, "sigma": sigma if isinstance(sigma, np.ndarray) else sigma.cpu().numpy(),
            "vectors": vectors}


def heavy_tail(spec: MatrixSpec, matrix: torch.Tensor, sigma: torch.Tensor, eps: float,
               view: str) -> dict[str, float | str]:
    """Heavy-tail metrics of one matrix's ESD: λ = σ² of the planned matrix, or, in the ``ww`` view,
    weightwatcher's pooled (out × in) slices of a 2-D conv kernel."""
    kernel_size = tuple(spec.kernel_size or ())
    if view == "ww" and spec.kind in CONV_KINDS and len(kernel_size) == 2:
        out_ch = matrix.shape[0]
        in_ch = matrix.shape[1] // (kernel_size[0] * kernel_size[1])
        evals = metrics.conv_slice_eigenvalues(matrix.reshape(out_ch, in_ch, *kernel_size))
        return metrics.heavy_tail_metrics(evals, (out_ch, in_ch), eps=eps)
    return metrics.heavy_tail_metrics(metrics.esd(sigma), tuple(matrix.shape), eps=eps)


def _load_unit(task: _Task, plan: Plan, options: AnalysisOptions, device: torch.device | str,
               backend: str = "torch") -> list[torch.Tensor | np.ndarray]:
    """The matrices of one unit of work, read onto ``device`` (run ahead, in a background thread):
    memory-mapped numpy arrays for the numpy backend."""
    if task.pair is not None:
        return []  # alignment reads its slices itself
    if backend == "numpy":
        return [_materialize(plan.specs[i], plan.array_readers[plan.specs[i].name]) for i in task.members]
    return [_materialize(plan.specs[i], plan.readers[plan.specs[i].name], options.precision).to(device)
            for i in task.members]


def decompose_batch(specs: Sequence[MatrixSpec], matrices: list[torch.Tensor], options: AnalysisOptions,
                    device: torch.device) -> list[dict[str, Any]]:
    """``decompose`` of several same-shaped matrices (singular values only, already read onto
    ``device``) with one batched call.

    A matrix with inf/NaN, or a batch that fails, goes the unbatched way, so every row is what
    ``decompose`` gives it.
    """
    finite = [i for i, matrix in enumerate(matrices) if all_finite(matrix)]
    results: dict[int, dict[str, Any]] = {}
    try:
        sigmas = metrics.singular_values_batch([matrices[i] for i in finite], precision=options.precision)
    except metrics.DecompositionError:
        sigmas, finite = [], []
    for i, sigma in zip(finite, sigmas):
        results[i] = _spectrum_result(specs[i], matrices[i], sigma, None, options)
    return [results[i] if i in results else decompose(spec, _already_read, options, device, matrices[i])
            for i, spec in enumerate(specs)]


def _already_read(name: str) -> torch.Tensor:
    raise RuntimeError(f"{name} should have been read ahead")  # pragma: no cover - decompose got the matrix


def use_batches(options: AnalysisOptions, device: torch.device, specs: Sequence[MatrixSpec]) -> bool:
    """Whether to batch same-shaped matrices: ``on``/``off``, or (``auto``) what the device measured
    (asked only when ``specs`` has two batchable matrices of one shape: nothing to measure otherwise)."""
    if options.top_k or options.batch == "off":
        return False
    if options.batch == "on":
        return True
    shapes = [(spec.shape, spec.dtype) for spec in specs if batchable(spec, options.top_k)]
    if len(set(shapes)) == len(shapes):
        return False
    from hf_spectral.calibration import batching_wins

    return batching_wins(device)


def all_finite(matrix: torch.Tensor | np.ndarray) -> bool:
    """Whether every entry is finite. A finite sum proves it (any inf/NaN makes the sum inf/NaN) at
    the cost of one pass and no memory; ``isfinite().all()`` is ~40x slower on the CPU and allocates
    a mask, so it only settles the rare sum that overflowed."""
    if isinstance(matrix, np.ndarray):
        with np.errstate(over="ignore", invalid="ignore"):  # float16 sums in float32: no overflow at 65504
            total = matrix.sum(dtype=np.float64 if matrix.dtype == np.float64 else np.float32)
        return bool(np.isfinite(total)) or bool(np.isfinite(matrix).all())
    flat = matrix if matrix.is_contiguous() or not matrix.mT.is_contiguous() else matrix.mT  # Conv1D views
    if bool(torch.isfinite(flat.sum())):
        return True
    return bool(torch.isfinite(matrix).all())


def _materialize(spec: MatrixSpec, read: Reader, precision: str = "float32") -> torch.Tensor:
    """The matrix of ``spec``; a tensor that cannot be read is a one-line error naming the layer."""
    if precision == "float64" and spec.composed:
        # g·v/‖v‖ (weight norm) or W·mask rounded in float32 would be off by ~1e-7·σ₁: compose in float64.
        stored = read

        def read(name: str) -> torch.Tensor:
            return stored(name).to(torch.float64)

    try:
        matrix = build_matrix(spec, read)
    except SpectralError:
        raise
    except (OSError, KeyError, SafetensorError) as exc:
        # The planning pass only read headers; the data can still be missing or cut short.
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SpectralError(
            f"{spec.name}: cannot read {', '.join(spec.tensors)} ({type(exc).__name__}: {detail}): "
            "re-download or re-save the checkpoint"
        ) from exc
    if isinstance(matrix, np.ndarray):
        return matrix  # the numpy backend's (F64/F32/F16, BF16 widened to F32)
    if matrix.is_floating_point() and matrix.element_size() == 1:
        # float8 has no isfinite/matmul kernels; bfloat16 holds every float8 value exactly at 2x, not 4x, the size
        matrix = matrix.to(torch.bfloat16)
    return matrix


Loader = Callable[..., "torch.Tensor"]  # (MatrixSlice, sliced=True) -> the slice's matrix on the device


def _gate_alignment(pair: AlignmentPair, load: Loader, specs: dict[str, MatrixSpec], k: int, precision: str) -> torch.Tensor:
    # LSTM: the gate's block of the left vectors of the whole stacked (i, f, g, o) matrix, as the
    # authors do, not the vectors of the gate's sub-matrix.
    rows = pair.prev.rows or (0, specs[pair.prev.matrix].shape[0])
    u_prev = metrics.decompose(load(pair.prev, sliced=False), k, precision=precision).u[rows[0]:rows[1]]
    v_next = metrics.decompose(load(pair.next), k, precision=precision).v
    return metrics.alignment_diagonal(u_prev, v_next, k)


def _conv_centre_alignment(pair: AlignmentPair, load: Loader, specs: dict[str, MatrixSpec], k: int,
                           precision: str) -> torch.Tensor:
    # Column slices (UNet skip halves) are in flattened (channel·kernel) units: slice, then unflatten.
    kernel_size = pair.kernel_size or specs[pair.next.matrix].kernel_size or ()
    kernel = load(pair.next)
    kernel = kernel.reshape(kernel.shape[0], -1, *kernel_size)
    return metrics.conv_centre_alignment(load(pair.prev), kernel, k, precision=precision)


# alignment mode -> (pair, load, specs, k, precision) -> diagonal; every AlignmentMode has one
ALIGNERS: dict[AlignmentMode, Callable[[AlignmentPair, Loader, dict[str, MatrixSpec], int, str], torch.Tensor]] = {
    "out_in": lambda pair, load, specs, k, precision: metrics.out_in_alignment(
        load(pair.prev), load(pair.next), k, precision=precision),
    "in_in": lambda pair, load, specs, k, precision: metrics.in_in_alignment(
        load(pair.prev), load(pair.next), k, precision=precision),
    "qk_heads": lambda pair, load, specs, k, precision: metrics.qk_head_alignment(
        load(pair.prev), load(pair.next), pair.prev.heads or 1, k, precision=precision),
    "conv_centre": _conv_centre_alignment,
}


def align(pair: AlignmentPair, specs: dict[str, MatrixSpec], readers: dict[str, Reader],
          options: AnalysisOptions, device: torch.device) -> dict[str, Any]:
    """Alignment diagonal of one consecutive-layer pair (its mode's function in ``ALIGNERS``)."""

    def load(where: MatrixSlice, sliced: bool = True) -> torch.Tensor:
        matrix = _materialize(specs[where.matrix], readers[where.matrix], options.precision).to(device)
        if not all_finite(matrix):
            raise ValueError(f"non-finite weights in {where.matrix}")
        return _slice(matrix, where) if sliced else matrix

    try:
        aligner = _gate_alignment if pair.gate else ALIGNERS.get(pair.mode)
        if aligner is None:
            raise ValueError(f"unknown alignment mode {pair.mode!r}")
        diagonal = aligner(pair, load, specs, options.alignment_k, options.precision)
    except (SpectralError, ValueError, RuntimeError) as exc:
        numerical = isinstance(exc, (metrics.DecompositionError, metrics.MetricInputError))
        if isinstance(exc, SpectralError) and not numerical:
            raise  # an unreadable tensor: the run stops, as for a matrix
        return {"diagonal": np.zeros(0), "score": float("nan"), "flag": f"failed: {exc}"}
    return {"diagonal": diagonal.detach().cpu().numpy().astype(np.float64), "score": metrics.top_score(diagonal), "flag": ""}


def _slice(matrix: torch.Tensor, where: MatrixSlice) -> torch.Tensor:
    if where.rows is not None:
        matrix = matrix[where.rows[0]:where.rows[1]]
    if where.cols is not None:
        matrix = matrix[:, where.cols[0]:where.cols[1]]
    return matrix


def _assemble(plan: Plan, matrix_results: list[dict], pair_results: list[dict], meta: dict[str, Any]) -> Snapshot:
    rows: list[dict[str, Any]] = []
    spectra: dict[str, np.ndarray] = {}
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for index, (spec, result) in enumerate(zip(plan.specs, matrix_results)):
        values = dict(result["metrics"])
        flag = str(values.pop("flag", "") or "")
        rows.append({
            **_describe(spec.name, plan.components.get(spec.name, ""), spec.tensor_shape, spec.dtype),
            "index": index, "kind": spec.kind, "view": spec.view, "rows": spec.shape[0], "cols": spec.shape[1],
            "status": STATUS_FLAGGED if flag.split(":")[0] in UNDEFINED_FLAGS else STATUS_OK, "flag": flag, **values,
        })
        if result["sigma"] is not None:
            spectra[spec.name] = result["sigma"]
        if result["vectors"] is not None:
            vectors[spec.name] = result["vectors"]
    for offset, skip in enumerate(plan.skipped):
        component = skip.name.split("/", 1)[0] if "/" in skip.name else ""
        rows.append({
            **_describe(skip.name, component, skip.shape, skip.dtype),
            "index": len(plan.specs) + offset, "kind": "", "view": "", "rows": -1, "cols": -1,
            "status": STATUS_SKIPPED, "flag": skip.reason,
        })
    table = pd.DataFrame(rows)
    for column in metrics.SPECTRUM_METRICS:
        if column not in table:
            table[column] = np.nan
    if "heavy_tail_flag" in table:  # skipped rows: no fit, and no flag of their own
        table["heavy_tail_flag"] = table["heavy_tail_flag"].fillna("").astype(str)
    alignment_rows = []
    diagonals: dict[str, np.ndarray] = {}
    for pair, result in zip(plan.pairs, pair_results):
        alignment_rows.append({"label": pair.label, "prev": pair.prev.matrix, "next": pair.next.matrix,
                               "mode": pair.mode, "score": result["score"], "k": len(result["diagonal"]),
                               "flag": result["flag"]})
        diagonals[pair.label] = result["diagonal"]
    return Snapshot(table, spectra, vectors, pd.DataFrame(alignment_rows), diagonals, meta)


def _describe(name: str, component: str, shape: Sequence[int], dtype: str) -> dict[str, Any]:
    return {"name": name, "component": component, "tensor_shape": "x".join(str(d) for d in shape), "dtype": dtype}


# --------------------------------------------------------------------------------------------------
# Dealing work over processes, and which backend computes it (devices and process state: processes.py)


def deal_by_cost(costs: Sequence[float], num_workers: int) -> list[list[int]]:
    """Assign items to workers so that total costs balance (longest-processing-time first).

    Contiguous chunks would give one process all the large layers of a deep model; this greedy
    dealing is within 4/3 of the best possible makespan.
    """
    loads = [0.0] * num_workers
    assignment: list[list[int]] = [[] for _ in range(num_workers)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        worker = min(range(num_workers), key=lambda w: (loads[w], w))
        assignment[worker].append(index)
        loads[worker] += costs[index]
    return [sorted(items) for items in assignment]


NUMPY_DEVICE = "cpu"  # the numpy backend's device, as a snapshot's meta names it


def compute_backend(plan: Plan, options: AnalysisOptions, state: Any) -> str:
    """``numpy`` or ``torch``: what decomposes ``plan`` in this process (``options.backend``; ``auto``:
    numpy wherever it can do the whole plan).

    The numpy backend (``metrics.numpy_backend`` on arrays ``SafetensorsReader.read_array`` maps from the
    files) computes the same float64 Gram eigenvalues with numpy's LAPACK, as fast as torch's on a CPU,
    and spares importing torch (~0.8 s, most of a CPU analysis's start-up: benchmarks/README.md). It
    takes singular values and their metrics (heavy-tail ones too, in the ``paper`` view) of single stored
    F64/F32/F16/BF16 tensors of safetensors files, in one process on the CPU. Everything else is torch's:
    vectors (``top_k``), alignment, composed weights (pruned, weight norm), float8, ``.bin`` files, live
    models, several processes, GPUs, ``batch="on"``.
    """
    reason = _torch_only(plan, options, state)
    if options.backend == "numpy" and reason:
        raise SpectralError(f"backend 'numpy' cannot compute this analysis: {reason}; use backend auto or torch")
    return "torch" if options.backend == "torch" or reason else "numpy"


def _torch_only(plan: Plan, options: AnalysisOptions, state: Any) -> str:
    """Why only the torch backend can compute ``plan`` here ("" when numpy can)."""
    if state.num_processes > 1:
        return "several processes"
    for needed, what in ((options.top_k, "singular vectors (top_k)"), (options.alignment, "alignment"),
                         (options.batch == "on", "batched decompositions (batch on)"),
                         (options.heavy_tail and options.view != "paper", f"the {options.view!r} view")):
        if needed:
            return what
    unreadable = [spec.name for spec in plan.specs if spec.name not in plan.array_readers]
    if unreadable:
        return f"{unreadable[0]} is not a single F64/F32/F16/BF16 tensor of a safetensors file"
    return "" if on_cpu(options.device, state) else f"device {options.device!r}"


@contextlib.contextmanager
def _computing(backend: str, state: Any, device: torch.device | str) -> Iterator[None]:
    """torch: no autograd, the CPU cores split between local processes. numpy: nothing to set."""
    if backend == "numpy":
        yield
        return
    with cpu_threads_for(state, device), torch.no_grad():
        yield


# --------------------------------------------------------------------------------------------------
# Entry points


def analyze_checkpoint(checkpoint: Checkpoint, options: AnalysisOptions) -> Snapshot:
    """Analyze one resolved checkpoint."""
    return run_plan(plan_checkpoint(checkpoint, options), options, checkpoint_meta(checkpoint))


def checkpoint_meta(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a snapshot records about the checkpoint it came from."""
    return {
        "source": checkpoint.source, "checkpoint": str(checkpoint.path), "label": checkpoint.label,
        "step": checkpoint.step, "revision": checkpoint.revision, "commit": checkpoint.commit,
    }


def analyze_model(model: torch.nn.Module, options: AnalysisOptions, *, step: int | None = None,
                  meta: dict[str, Any] | None = None, threads: int = 1, torch_threads: int | None = None) -> Snapshot:
    """Analyze the live parameters of ``model`` (under ``no_grad``; the model is not modified);
    ``threads`` and ``torch_threads`` as ``run_plan``'s."""
    plan = plan_model(model, options)
    return run_plan(plan, options, {"source": type(model).__name__, "step": step, **(meta or {})}, threads=threads,
                    torch_threads=torch_threads)


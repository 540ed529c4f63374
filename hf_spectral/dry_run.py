"""``estimate``: what analyzing a SOURCE will cost, from safetensors headers only (``analyze --dry-run``).

Nothing reads tensor data and, for a Hub id, no weight file is downloaded (``sources.headers``). The
plan is the one ``analyze`` would run (same filters, same matrices); its cost comes from
``hf_spectral.cost`` at this device's measured rates (``hf_spectral.calibration``, measured once and cached).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from hf_spectral.cost import PlanCost, plan_cost
from hf_spectral.engine import (
    AnalysisOptions,
    Plan,
    compute_backend,
    plan_checkpoint,
    process_state,
    resolve_device,
    use_batches,
)
from hf_spectral.sources.headers import resolve_headers


@dataclass
class Estimate:
    """A plan and its predicted cost: on one process, and dealt over ``cost.processes`` processes."""

    source: str
    checkpoints: list[str]  # labels: a Trainer run or a sweep has several, each costing about the same
    plan: Plan
    single: PlanCost  # one process on this device
    cost: PlanCost  # dealt over the processes asked for (or launched)
    backend: str = "torch"  # what would compute it in one process (engine.compute_backend)

    @property
    def sweep_s(self) -> float:
        """Predicted seconds for every checkpoint, one after the other, with ``cost.processes`` processes."""
        return len(self.checkpoints) * self.cost.kernel_s + self.cost.startup_s


def estimate(source: str | os.PathLike, revision: str | None = None, *, variant: str | None = None,
             processes: int | None = None, recalibrate: bool = False, **options: Any) -> Estimate:
    """The plan of analyzing ``source`` and its predicted cost (FLOPs, bytes, seconds), headers only.

    ``processes``: predict for this many processes (``accelerate launch --num_processes``); default the
    processes this one was launched with. ``options``: those of ``analyze`` (include, exclude, top_k,
    device, precision, alignment, batch). ``recalibrate``: measure this device's rates again.
    """
    analysis = AnalysisOptions(**{"progress": False, **options})
    return estimate_resolved(resolve_headers(str(source), revision=revision, variant=variant), analysis,
                             source=str(source), processes=processes, recalibrate=recalibrate)


def estimate_resolved(checkpoints: list, options: AnalysisOptions, *, source: str,
                      processes: int | None = None, recalibrate: bool = False) -> Estimate:
    """``estimate`` for checkpoints already resolved (headers only); closes them."""
    from hf_spectral.calibration import calibration_for

    try:
        plan = plan_checkpoint(checkpoints[0], options)
        stored = _stored_bytes(checkpoints[0])
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()
    state = process_state()
    backend = compute_backend(plan, options, state)
    device = resolve_device(options.device, state)
    calibration = calibration_for(device, refresh=recalibrate, startup=True)
    bytes_of = {spec.name: sum(stored.get((plan.components.get(spec.name, ""), t), 0) for t in spec.tensors)
                for spec in plan.specs}
    common = dict(device=str(device), top_k=options.top_k, precision=options.precision,
                  alignment_k=options.alignment_k, bytes_of=bytes_of)
    count = processes or state.num_processes
    # Several launched processes are always torch's. Kernel rates are torch's for both backends (numpy's
    # measured as fast: benchmarks/README.md); the start-up and the batching are the backend's.
    batched = use_batches(options, device, plan.specs)
    single = plan_cost(plan.specs, plan.pairs, calibration, batched=batched and backend == "torch", processes=1,
                       **common)
    single = replace(single, startup_s=calibration.startup_for(backend))
    dealt = single if count == 1 else plan_cost(plan.specs, plan.pairs, calibration, batched=batched,
                                                processes=count, **common)
    return Estimate(source, [c.label for c in checkpoints], plan, single, dealt, backend)


def _stored_bytes(checkpoint: Any) -> dict[tuple[str, str], int]:
    return {(part.component, info.name): info.nbytes for part in checkpoint.parts for info in part.reader.tensors()}

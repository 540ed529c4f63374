"""``hf-spectral analyze SOURCE --dry-run``: the plan and its predicted cost, printed (headers only)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hf_spectral.cli.common import is_main_process

if TYPE_CHECKING:
    from hf_spectral.dry_run import Estimate
    from hf_spectral.engine import AnalysisOptions


def run_dry_run(args: argparse.Namespace, options: AnalysisOptions) -> int:
    from hf_spectral.dry_run import estimate_resolved
    from hf_spectral.errors import SpectralError
    from hf_spectral.sources.headers import resolve_headers

    if args.processes is not None and args.processes < 1:
        raise SpectralError(f"--processes must be at least 1, got {args.processes}")
    checkpoints = resolve_headers(args.source, revision=args.revision, variant=args.variant)
    estimate = estimate_resolved(checkpoints, options, source=args.source, processes=args.processes,
                                 recalibrate=args.recalibrate)
    if is_main_process():
        print(format_estimate(estimate, limit=None if args.all else 40))
    return 0


def format_estimate(estimate: Estimate, limit: int | None = 40) -> str:
    """A per-matrix table of the plan with FLOPs, bytes and predicted seconds, then the totals."""
    single, dealt = estimate.single, estimate.cost
    rows = single.matrices
    shown = rows if limit is None else rows[:limit]
    width = max([len("matrix"), *(len(r.name) for r in shown)])
    batch_sizes: dict[int, int] = {}
    for r in rows:
        batch_sizes[r.unit] = batch_sizes.get(r.unit, 0) + 1
    lines = [f"dry run of {estimate.source}: from safetensors headers only (no tensor data read)",
             f"{'matrix'.ljust(width)}  {'shape':>12}  {'dtype':>5}  {'GFLOP':>8}  {'MB read':>8}  {'est. s':>7}  batch"]
    for r in shown:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        batch = f"{batch_sizes[r.unit]}" if batch_sizes[r.unit] > 1 else ""
        lines.append(f"{r.name.ljust(width)}  {shape:>12}  {r.dtype:>5}  {r.flops / 1e9:8.3f}  "
                     f"{r.bytes_read / 2**20:8.2f}  {r.seconds:7.3f}  {batch}")
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (--all prints every row)")
    plan = estimate.plan
    c = single.calibration
    lines += [
        f"total: {len(plan.specs)} matrices{f', {len(plan.pairs)} alignment pairs' if plan.pairs else ''}, "
        f"{len(plan.skipped)} tensors skipped; {single.flops / 1e9:.1f} GFLOP, {single.bytes_read / 2**20:.1f} MB to read"
        f"{'; same-shaped matrices batched' if single.batched else ''}",
        f"predicted on {single.device} ({c.device}; rates measured {c.measured_at}: float64 GEMM "
        f"{c.gemm_flops_per_s / 1e9:.1f} GFLOP/s): decompositions {single.kernel_s:.2f} s, "
        f"whole process {single.wall_s:.2f} s (start-up {single.startup_s:.2f} s, {estimate.backend} backend)",
    ]
    if c.load > c.cores:
        lines.append(f"note: the rates were measured while the load average was {c.load:.1f} on {c.cores} cores; "
                     "on a quieter machine rerun with --recalibrate")
    if dealt.processes > 1:
        loads = " / ".join(f"{s:.2f}" for s in dealt.per_process_s)
        lines.append(f"under accelerate launch with {dealt.processes} processes: per process {loads} s; "
                     f"whole process {dealt.wall_s:.2f} s")
    if len(estimate.checkpoints) > 1:
        lines.append(f"{len(estimate.checkpoints)} checkpoints ({estimate.checkpoints[0]} ... {estimate.checkpoints[-1]}): "
                     f"~{estimate.sweep_s:.1f} s for all of them with {dealt.processes} process(es), "
                     "if each costs what the first does")
    return "\n".join(lines)

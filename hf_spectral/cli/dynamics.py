"""``hf-spectral dynamics``: a series of snapshots → a per-layer summary printed + tidy tables written."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from hf_spectral.cli.common import (
    add_output_arguments, add_series_arguments, analysis_options, is_main_process, print_notes, series_revisions,
    series_sources,
)
from hf_spectral.dynamics.types import Dynamics


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "dynamics", help="trajectories, agreement and alignment over a series of checkpoints",
        description="Spectra over time of a callback record folder, a Trainer output folder (checkpoint-*, "
        "analyzed once and cached), several checkpoints, or Hub revisions (--revisions step1000,step2000 or 'step*'). "
        "Prints a per-layer summary and writes tidy parquet tables "
        "(load them with hf_spectral.dynamics.load_dynamics).",
    )
    add_series_arguments(parser)
    add_output_arguments(parser, "tables folder (default: spectral/<source name>/dynamics)")
    parser.set_defaults(run=run_dynamics)


def run_dynamics(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import default_output
    from hf_spectral.dynamics import compute_dynamics, save_dynamics
    from hf_spectral.series import load_series

    output = args.output or default_output(args.sources[0]) / "dynamics"
    # Snapshots are kept in the cache every command shares ($HF_SPECTRAL_CACHE), unless --cache-dir says where.
    snapshots = load_series(series_sources(args), revisions=series_revisions(args), cache_dir=args.cache_dir,
                            variant=args.variant, **analysis_options(args))
    dyn = compute_dynamics(snapshots, reference=args.reference, top=args.top)
    if is_main_process():
        save_dynamics(dyn, output)
        print_notes(dyn)
        print(format_dynamics(dyn, limit=None if args.all else 40))
        print(f"tables written to {output}")
    return 0


def format_dynamics(dyn: Dynamics, limit: int | None = 40) -> str:
    """A per-layer summary: first/last normalized effective rank, stable rank, σ_max, and the top-k
    agreement of the first snapshot with the reference."""
    meta = dyn.meta
    steps = dyn.steps
    lines = [f"{meta.get('snapshots', len(steps))} snapshots"
             + (f", steps {steps[0]}..{steps[-1]}" if steps and not meta.get("step_is_position") else "")
             + f"; reference: {meta.get('reference')}"]
    # identical and missing checkpoints: the series loader has logged them once (stderr)
    table = per_layer(dyn)
    if len(table):
        shown = table if limit is None else table.head(limit)
        lines.append(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}", max_colwidth=60))
        if limit is not None and len(table) > limit:
            lines.append(f"... {len(table) - limit} more matrices (--all prints every row)")
    for key in ("agreement", "alignment"):
        if meta.get(key):
            lines.append(f"{key}: {meta[key]}")
    return "\n".join(lines)


def per_layer(dyn: Dynamics) -> pd.DataFrame:
    """One row per matrix: metrics (α included: NaN where no fit is defined) at the first and last snapshot,
    agreement of the first with the reference."""
    traj = dyn.trajectories
    if not len(traj):
        return pd.DataFrame()
    first_step, last_step = traj["step"].min(), traj["step"].max()
    first = traj[traj["step"] == first_step].set_index("matrix")
    last = traj[traj["step"] == last_step].set_index("matrix")
    top = dyn.meta.get("top", 10)
    scores = dyn.agreement_scores
    reference = scores[(scores["reference_kind"] == "reference") & (scores["step"] == first_step)].set_index("matrix")
    rows = []
    for matrix in dyn.matrices:
        rows.append({
            "matrix": matrix,
            "shape": f"{_at(first, matrix, 'rows', last)}x{_at(first, matrix, 'cols', last)}",
            "erank/R first": _at(first, matrix, "normalized_effective_rank"),
            "erank/R last": _at(last, matrix, "normalized_effective_rank"),
            "srank/R first": _at(first, matrix, "normalized_stable_rank"),
            "srank/R last": _at(last, matrix, "normalized_stable_rank"),
            "sigma_max first": _at(first, matrix, "spectral_norm"),
            "sigma_max last": _at(last, matrix, "spectral_norm"),
            "alpha first": _at(first, matrix, "alpha"),
            "alpha last": _at(last, matrix, "alpha"),
            f"agree@{top} first": _at(reference, matrix, "score"),
        })
    return pd.DataFrame(rows)


def _at(table: pd.DataFrame, matrix: str, column: str, fallback: pd.DataFrame | None = None) -> object:
    if matrix in table.index and column in table:
        value = table.loc[matrix, column]
        return value.iloc[0] if isinstance(value, pd.Series) else value
    if fallback is not None:
        return _at(fallback, matrix, column)
    return np.nan


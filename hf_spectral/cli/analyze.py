"""``hf-spectral analyze``: one checkpoint (or every checkpoint of a run) → a printed table + snapshot."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_spectral.cli.common import add_analysis_arguments, analysis_options, is_main_process
from hf_spectral.store import Snapshot

TABLE_COLUMNS = {
    "name": "name",
    "kind": "kind",
    "shape": "shape",
    "dtype": "dtype",
    "normalized_effective_rank": "erank/R",
    "normalized_stable_rank": "srank/R",
    "spectral_norm": "sigma_max",
    "flag": "flag",
}


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "analyze", help="spectra of every weight matrix of a checkpoint",
        description="Analyze a .safetensors file, a model folder, a diffusers pipeline, a Trainer run "
        "(every checkpoint-*) or a Hub model id; print a per-layer table and write the snapshot. "
        "Under `accelerate launch` (or torchrun) the SVDs are dealt over the processes by cost; on a machine "
        "without GPUs use `accelerate launch --multi_gpu --num_processes N -m hf_spectral analyze ...` "
        "(accelerate's --cpu starts a single process unless MPI is set up).",
    )
    parser.add_argument("source", metavar="SOURCE", help="file, folder, Trainer output folder or Hub model id")
    add_analysis_arguments(parser)
    parser.add_argument("--output", type=Path, help="snapshot folder (default: spectral/<source name>)")
    parser.add_argument("--all", action="store_true", help="print every row (default: up to 40 matrices)")
    parser.set_defaults(run=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import analyze_resolved, analyze_resolved_series, default_output
    from hf_spectral.engine import AnalysisOptions
    from hf_spectral.sources import classify, open_source

    options = AnalysisOptions(**analysis_options(args))
    output = args.output or default_output(args.source)
    # Opened once: a Hub id is looked up (and fetched) one time, a run listed one time.
    found = classify(args.source, revision=args.revision)
    checkpoints = open_source(found, variant=args.variant)
    if not found.is_series:
        snapshot = analyze_resolved(checkpoints, options, source=args.source, output=output)
        if is_main_process():
            print(format_table(snapshot, limit=None if args.all else 40))
            print(format_summary(snapshot))
            print(f"snapshot written to {output}")
        return 0
    snapshots = analyze_resolved_series(checkpoints, options, cache_dir=output)
    if is_main_process():
        for snapshot in snapshots:
            print(f"{snapshot.meta.get('label')}: {format_summary(snapshot)}")
        print(f"{len(snapshots)} snapshots written under {output}")
    return 0


def format_table(snapshot: Snapshot, limit: int | None = 40) -> str:
    """A fixed-width per-layer table of the decomposed matrices, then the skipped tensors."""
    matrices = snapshot.matrices.copy()
    matrices["shape"] = matrices["rows"].astype(str) + "x" + matrices["cols"].astype(str)
    shown = matrices if limit is None else matrices.head(limit)
    frame = shown[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
    # names left-aligned (pandas right-aligns strings), so that the layers of a block line up
    width = max([len("name"), *frame["name"].str.len()])
    frame = frame.rename(columns={"name": "name".ljust(width)})
    lines = [frame.to_string(index=False, float_format=lambda x: f"{x:.4g}",
                             formatters={frame.columns[0]: lambda name: name.ljust(width)})]
    if limit is not None and len(matrices) > limit:
        lines.append(f"... {len(matrices) - limit} more matrices (--all prints every row)")
    skipped = snapshot.skipped
    if len(skipped):
        lines.append(f"skipped {len(skipped)} tensors:")
        for _, row in skipped.head(10).iterrows():
            lines.append(f"  {row['name']} ({row['tensor_shape']}, {row['dtype']}): {row['flag']}")
        if len(skipped) > 10:
            lines.append(f"  ... {len(skipped) - 10} more (see matrices.parquet)")
    return "\n".join(lines)


def format_summary(snapshot: Snapshot) -> str:
    s = snapshot.summary()
    text = f"{s['matrices']} matrices, {s['skipped']} skipped, {s['flagged']} flagged"
    if s.get("flagged"):
        text += " (metrics undefined: zero or non-finite weights)"
    if s.get("rank_deficient"):
        text += f", {s['rank_deficient']} rank-deficient (metrics defined)"
    if "mean_normalized_effective_rank" in s:
        text += f"; mean erank/R {s['mean_normalized_effective_rank']:.4f}, mean srank/R {s['mean_normalized_stable_rank']:.4f}"
    if snapshot.meta.get("seconds") is not None:
        text += f"; {snapshot.meta['seconds']:.2f} s on {snapshot.meta.get('device')}"
    return text

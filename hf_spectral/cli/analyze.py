"""``hf-spectral analyze``: one checkpoint (or every checkpoint of a run) → a printed table + snapshot."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_spectral.store import Snapshot

TABLE_COLUMNS = {
    "name": "matrix",
    "kind": "kind",
    "shape": "shape",
    "dtype": "dtype",
    "normalized_effective_rank": "erank/R",
    "normalized_stable_rank": "srank/R",
    "spectral_norm": "sigma_max",
    "flag": "flag",
}


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the analyzer."""
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) for a model id")
    parser.add_argument("--variant", help="weight variant to read, e.g. fp16 (diffusers/transformers variants)")
    parser.add_argument("--include", action="append", metavar="REGEX", help="analyze only matrices whose name matches (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="REGEX", help="skip matrices whose name matches (repeatable)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="also keep the top-K singular vectors (default: values only)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute precision (default float32)")
    parser.add_argument("--alignment", action="store_true", help="also compute consecutive-layer alignment")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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


def analysis_options(args: argparse.Namespace) -> dict:
    return dict(include=args.include, exclude=args.exclude, top_k=args.top_k, device=args.device,
                precision=args.dtype, alignment=args.alignment, progress=not args.no_progress)


def run_analyze(args: argparse.Namespace) -> int:
    from hf_spectral.analyzer import analyze_resolved, analyze_resolved_series, default_output
    from hf_spectral.engine import AnalysisOptions
    from hf_spectral.sources import resolve

    options = AnalysisOptions(**analysis_options(args))
    output = args.output or default_output(args.source)
    # Resolved once: a Hub id is looked up (and fetched) one time, a run listed one time.
    checkpoints = resolve(args.source, revision=args.revision, variant=args.variant)
    if len(checkpoints) == 1:
        snapshot = analyze_resolved(checkpoints, options, source=args.source, output=output)
        if _is_main():
            print(format_table(snapshot, limit=None if args.all else 40))
            print(format_summary(snapshot))
            print(f"snapshot written to {output}")
        return 0
    snapshots = analyze_resolved_series(checkpoints, options, cache_dir=output)
    if _is_main():
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
    width = max([len("matrix"), *frame["matrix"].str.len()])
    frame = frame.rename(columns={"matrix": "matrix".ljust(width)})
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
    if "mean_normalized_effective_rank" in s:
        text += f"; mean erank/R {s['mean_normalized_effective_rank']:.4f}, mean srank/R {s['mean_normalized_stable_rank']:.4f}"
    if snapshot.meta.get("seconds") is not None:
        text += f"; {snapshot.meta['seconds']:.2f} s on {snapshot.meta.get('device')}"
    return text


def _is_main() -> bool:
    from hf_spectral.engine import process_state

    return process_state().is_main_process


"""Arguments and helpers shared by the ``hf-spectral`` commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

DEFAULT_SERIES_TOP_K = 20  # singular vectors kept per matrix where agreement is computed
DYNAMICS_META = "dynamics.json"  # marks a folder written by save_dynamics


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
    parser.add_argument("--metrics", choices=["paper", "heavy_tail"], default="paper",
                        help="metric groups: paper (default: ranks and norms) or heavy_tail (adds weightwatcher's "
                        "alpha, xmin, D, alpha_weighted, log norms, MP soft rank; docs/heavy_tailed.md)")
    parser.add_argument("--view", choices=["paper", "ww"], default="paper",
                        help="ESD of conv kernels for the heavy_tail metrics: paper (flattened, default) or ww "
                        "(weightwatcher's pooled k*k slices)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--batch", default="auto", choices=["auto", "on", "off"],
                        help="decompose same-shaped matrices in batched calls: auto (default: where this device "
                        "measured faster), on, off")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "torch"],
                        help="what decomposes: auto (default: numpy's LAPACK for singular values on the CPU, which "
                        "spares importing torch; torch for vectors, alignment, GPUs, several processes), numpy, torch")
    parser.add_argument("--register", action="append", metavar="MODULE|FILE.py", default=[],
                        help="import this module or file first: its hf_spectral.register_architecture calls tell the "
                        "analyzer about your own model family (e.g. --register recipes/grokking.py); repeatable")


def add_output_arguments(parser: argparse.ArgumentParser, output_help: str, *, rows: str | None = "matrix") -> None:
    """``--output`` (a folder) and, for commands that print a table of ``rows``, ``--all``."""
    parser.add_argument("--output", type=Path, help=output_help)
    if rows is not None:
        parser.add_argument("--all", action="store_true", help=f"print every {rows} (default: up to 40)")


def load_registrations(items: Sequence[str]) -> None:
    """Import each ``--register`` module (dotted name) or Python file, for its ``register_architecture``
    calls. A file is imported as a module: its ``if __name__ == "__main__":`` block does not run."""
    import importlib
    import importlib.util
    import sys

    from hf_spectral.errors import SpectralError

    for item in items:
        path = Path(item)
        try:
            if item.endswith(".py") or path.is_file():
                if not path.is_file():
                    raise SpectralError(f"--register {item}: no such file; pass a .py file or an importable module")
                name = f"hf_spectral_registered_{path.stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # dataclasses of the file resolve their module by name
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except SpectralError:
            raise
        except Exception as exc:  # the user's code: any error, named in one line
            raise SpectralError(f"--register {item} failed: {type(exc).__name__}: {exc}; fix that module") from exc


def analysis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``AnalysisOptions`` keyword arguments given on the command line."""
    options = dict(include=args.include, exclude=args.exclude, top_k=args.top_k, device=args.device,
                   precision=args.dtype, alignment=args.alignment, progress=not args.no_progress,
                   heavy_tail=args.metrics == "heavy_tail", view=args.view,
                   batch=args.batch, backend=args.backend)
    if getattr(args, "no_alignment", False):
        options["alignment"] = False
    return options


def keep_vectors_by_default(parser: argparse.ArgumentParser, *, alignment: bool) -> None:
    """Commands that compute agreement keep singular vectors by default (and alignment, when it is
    part of their output); say so in their --help."""
    parser.set_defaults(top_k=DEFAULT_SERIES_TOP_K, alignment=alignment)
    for action in parser._actions:
        if action.dest == "top_k":
            action.help = f"singular vectors kept per matrix, for agreement (default {DEFAULT_SERIES_TOP_K})"
        elif action.dest == "alignment":
            action.help = ("compute consecutive-layer alignment (the default; see --no-alignment)" if alignment
                           else argparse.SUPPRESS)


def add_series_arguments(parser: argparse.ArgumentParser, *, figures: bool = False) -> None:
    """SOURCE... and the options of the commands that turn a series of checkpoints into dynamics
    (``dynamics``; with ``figures`` also ``report`` and ``card``, which mark a training metric)."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="callback record, Trainer run, checkpoints (several), or one Hub model id"
                        + (", or a saved dynamics folder" if figures else ""))
    parser.add_argument("--revisions", metavar="LIST",
                        help="Hub revisions: comma-separated names and/or globs, e.g. step1000,step2000 or 'step*'")
    parser.add_argument("--reference", default="final", metavar="final|first|LABEL|STEP",
                        help="the snapshot agreement is measured against (default: final)")
    parser.add_argument("--top", type=int, default=10, help="diagonal entries averaged by the scores (default 10)")
    parser.add_argument("--cache-dir", type=Path, help="where analyzed snapshots are kept for reuse "
                        "(default: the cache every command shares, $HF_SPECTRAL_CACHE/snapshots)")
    parser.add_argument("--no-alignment", action="store_true", help="skip consecutive-layer alignment")
    if figures:
        parser.add_argument("--metric", help="training metric shown against rank (default: the validation accuracy when logged)")
        parser.add_argument("--threshold", type=float, default=0.9, help="level of --metric to mark (default 0.9)")
    add_analysis_arguments(parser)
    keep_vectors_by_default(parser, alignment=True)


def series_revisions(args: argparse.Namespace) -> Any:
    """``--revisions`` or ``--revision`` (one of them)."""
    from hf_spectral.errors import SpectralError

    if args.revision and args.revisions:
        raise SpectralError("give either --revision or --revisions, not both")
    return args.revisions or args.revision


def series_sources(args: argparse.Namespace) -> Any:
    return args.sources[0] if len(args.sources) == 1 else args.sources


def load_dynamics_for(args: argparse.Namespace) -> Any:
    """The ``Dynamics`` of ``args.sources``: read when it is one saved dynamics folder, else computed."""
    if len(args.sources) == 1 and (Path(args.sources[0]) / DYNAMICS_META).is_file():
        from hf_spectral.dynamics import load_dynamics

        return load_dynamics(Path(args.sources[0]))
    from hf_spectral.series import dynamics_from_source

    return dynamics_from_source(series_sources(args), revisions=series_revisions(args), reference=args.reference,
                                cache_dir=args.cache_dir, top=args.top, variant=args.variant, **analysis_options(args))


def print_notes(dynamics: Any) -> None:
    """Say what was read of each SOURCE where there was a choice (a record over checkpoints...)."""
    for note in dynamics.meta.get("notes") or []:
        print(note)


def is_main_process() -> bool:
    """Only the main accelerate process prints and writes."""
    from hf_spectral.engine import process_state

    return process_state().is_main_process

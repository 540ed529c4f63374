"""The ``hf-spectral`` command line: one module per command, each with ``add_command(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from hf_spectral._version import __version__
from hf_spectral.errors import SpectralError

COMMANDS = ("analyze", "dynamics", "report", "card", "compare")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except SpectralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-spectral",
        description="Singular values and vectors of every weight matrix, across checkpoints and training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"hf_spectral.cli.{name}")
        module.add_command(commands)
    return parser

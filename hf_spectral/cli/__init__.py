"""The ``hf-spectral`` command line: one module per command, each with ``add_command(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Sequence

from hf_spectral._version import __version__
from hf_spectral.errors import SpectralError, report_error
from hf_spectral.recipe_support.entry import EXIT_BAD_INPUT

COMMANDS = ("analyze", "dynamics", "report", "card", "compare", "sweep")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Flags after "--" belong to a program the command starts (``sweep``'s recipe), not to the command.
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        argv, passthrough = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    args = parser.parse_args(argv)
    if passthrough and not getattr(args, "takes_passthrough", False):
        parser.error(f"unexpected arguments after --: {' '.join(passthrough)}")
    args.passthrough = passthrough
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        if getattr(args, "register", None):
            from hf_spectral.cli.common import load_registrations

            load_registrations(args.register)
        return int(args.run(args) or 0)
    except SpectralError as exc:
        report_error(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``hf-spectral`` console entry point: ``main``, then a fast exit.

    Tearing down the interpreter after torch and pandas were imported costs ~0.3-1 s (module and
    object finalization) that a finished command has no use for: everything it writes is written,
    atomically, before ``main`` returns. So a single process flushes its streams and logging and leaves
    with ``os._exit``; launched processes (``accelerate launch``) exit normally, so that their process
    group is torn down properly.
    """
    code = main()
    engine = sys.modules.get("hf_spectral.engine")  # not imported: nothing heavy to tear down
    if engine is None or engine.launched_processes() > 1:
        sys.exit(code)
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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

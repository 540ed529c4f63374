"""A script's entry point: bad input is one line, as in the ``hf-spectral`` CLI, not a traceback."""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

from hf_spectral.errors import SpectralError, report_error

EXIT_BAD_INPUT = 2  # the CLI's and argparse's status for bad input


def run_main(main: Callable[..., Any], *args: Any) -> NoReturn:
    """``main(*args)``, then exit 0; a ``SpectralError`` prints ``error: <message>`` and exits with status 2.

        if __name__ == "__main__":
            hf_spectral.run_main(main, sys.argv[1:])
    """
    try:
        main(*args)
    except SpectralError as exc:
        report_error(exc)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(0)

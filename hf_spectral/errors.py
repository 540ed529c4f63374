"""The one exception type hf_spectral raises for bad input."""

from __future__ import annotations


class SpectralError(Exception):
    """Bad input or configuration.

    The message is one line that names the file or layer at fault and says how to fix it;
    the CLI prints it as ``error: <message>`` and exits with status 2, without a traceback.
    """


def report_error(exc: SpectralError) -> None:
    """Print ``error: <message>`` on stderr, once: on the main process of launched ones (they all fail alike)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"error: {exc}", file=sys.stderr)

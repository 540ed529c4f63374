"""``hf-spectral card``: not implemented yet."""

from __future__ import annotations

import argparse


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register the command (placeholder until it is built)."""

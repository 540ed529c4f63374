"""Ordering names as people read them."""

from __future__ import annotations

import re
from typing import Any


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers: ``h.2`` before ``h.10``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))

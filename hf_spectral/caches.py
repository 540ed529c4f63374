"""Where hf_spectral keeps its caches: ``$HF_SPECTRAL_CACHE`` (default ``~/.cache/hf_spectral``), one
subfolder per cache (``module_types``, ``calibration``, ``hub_headers``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """hf_spectral's cache folder: ``$HF_SPECTRAL_CACHE`` (default ``~/.cache/hf_spectral``), None when
    ``HF_SPECTRAL_CACHE=off``. Each cache lives in its own subfolder (``module_types``, ``calibration``)."""
    root = os.environ.get("HF_SPECTRAL_CACHE")
    if root is not None and root.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    return Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_spectral"

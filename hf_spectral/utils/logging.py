"""Logging and progress bars the way transformers and huggingface_hub do them.

    from hf_spectral.utils import logging
    logging.set_verbosity_info()          # or HF_SPECTRAL_VERBOSITY=info
    logging.disable_progress_bars()       # or HF_HUB_DISABLE_PROGRESS_BARS=1 / TQDM_DISABLE=1

Every hf_spectral logger is a child of the ``hf_spectral`` logger (level WARNING unless
``HF_SPECTRAL_VERBOSITY`` says otherwise), which has one stderr handler. Unlike transformers', it
also propagates to the root logger, so that an application's own logging configuration (and
pytest's ``caplog``) sees its records; the stderr handler then stays quiet (each record is
printed once, by whoever configured the root logger).

Progress bars (:func:`tqdm`) are off when disabled here, when ``HF_HUB_DISABLE_PROGRESS_BARS`` or
``TQDM_DISABLE`` is set, and when stderr is not a terminal (no ``\\r`` lines in log files; a
Jupyter notebook's widget bar is shown).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Iterable

from logging import CRITICAL, DEBUG, ERROR, INFO, WARNING  # noqa: F401  (re-exported, as transformers does)

LIBRARY = "hf_spectral"
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
_TRUE = {"1", "true", "yes", "on"}

_lock = threading.Lock()
_handler: logging.Handler | None = None
_progress_enabled = True


def _env_level() -> int:
    value = os.environ.get("HF_SPECTRAL_VERBOSITY", "").strip().lower()
    return _LEVELS.get(value, WARNING)


def _root() -> logging.Logger:
    global _handler
    with _lock:
        root = logging.getLogger(LIBRARY)
        if _handler is None:
            _handler = logging.StreamHandler(sys.stderr)
            _handler.setFormatter(logging.Formatter("%(message)s"))
            _handler.addFilter(lambda record: not logging.getLogger().handlers)  # root prints it instead
            root.addHandler(_handler)
            root.setLevel(_env_level())
        return root


def get_logger(name: str | None = None) -> logging.Logger:
    """The logger ``name`` (a child of ``hf_spectral``; the library's own logger when None)."""
    _root()
    return logging.getLogger(name or LIBRARY)


def get_verbosity() -> int:
    """The level of the ``hf_spectral`` logger (``logging.WARNING`` by default)."""
    return _root().getEffectiveLevel()


def set_verbosity(level: int) -> None:
    """Set the level of every hf_spectral logger (``logging.INFO``, ``logging.ERROR``, ...)."""
    _root().setLevel(level)


def set_verbosity_debug() -> None:
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    set_verbosity(ERROR)


def disable_default_handler() -> None:
    """Remove the stderr handler (records still propagate to the root logger)."""
    root = _root()
    if _handler is not None:
        root.removeHandler(_handler)


def enable_default_handler() -> None:
    root = _root()
    if _handler is not None and _handler not in root.handlers:
        root.addHandler(_handler)


def enable_progress_bars() -> None:
    """Show progress bars again (environment variables that disable them still win)."""
    global _progress_enabled
    _progress_enabled = True


def disable_progress_bars() -> None:
    """Hide every hf_spectral progress bar."""
    global _progress_enabled
    _progress_enabled = False


def are_progress_bars_disabled() -> bool:
    """Whether bars are off here, by ``HF_HUB_DISABLE_PROGRESS_BARS`` or by ``TQDM_DISABLE``."""
    if not _progress_enabled:
        return True
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")):
        return True  # read now: huggingface_hub reads its variable once, at import
    # huggingface_hub.utils.disable_progress_bars() turns ours off too, as it does transformers'.
    from huggingface_hub.utils import are_progress_bars_disabled as hub_disabled

    return bool(hub_disabled())


def tqdm(iterable: Iterable[Any] | None = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar that is off when disabled (argument, :func:`disable_progress_bars`, environment)
    and when stderr is not a terminal."""
    from tqdm.auto import tqdm as auto_tqdm

    # tqdm.auto picked the notebook widget (Jupyter's stderr is no TTY, but the bar is wanted there)
    notebook = any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__)
    off = disable or are_progress_bars_disabled() or not (notebook or _is_terminal(kwargs.get("file")))
    return auto_tqdm(iterable, disable=off, **kwargs)


def _is_terminal(stream: Any) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

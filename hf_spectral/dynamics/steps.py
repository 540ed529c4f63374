"""The step axis of a series: linear or log10(1 + step), chosen from the schedule.

Pure numpy, so that both the highlights (slopes per decade) and the plots (which add the drawing)
use one definition without the highlights importing plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from hf_spectral.errors import SpectralError


@dataclass(frozen=True)
class StepScale:
    """Where a training step goes on a step axis (the arithmetic only; ``plots.StepAxis`` draws it).

    ``log``: x = log10(1 + step), so that step 0 (the initialization) has a place. Chosen when the
    snapshot schedule is log-spaced. Slopes over steps (``highlights``) use the same x.
    """

    log: bool

    @classmethod
    def for_steps(cls, steps: Iterable[float], scale: str = "auto") -> "StepScale":
        if scale not in ("auto", "log", "linear"):
            raise SpectralError(f"unknown step scale {scale!r}; use auto, log or linear")
        if scale != "auto":
            return cls(log=scale == "log")
        return cls(log=is_log_spaced(steps))

    @property
    def name(self) -> str:
        return "log10(1 + step)" if self.log else "step"

    def x(self, steps: Iterable[float]) -> np.ndarray:
        values = np.asarray(list(steps) if not isinstance(steps, np.ndarray) else steps, dtype=float)
        return np.log10(1.0 + np.clip(values, 0, None)) if self.log else values

    def edges(self, steps: Sequence[float]) -> np.ndarray:
        """Cell edges around each step (for heat maps): midpoints in axis coordinates."""
        x = self.x(steps)
        if len(x) == 1:
            half = 0.5 if self.log else max(0.5, abs(x[0]) * 0.05)
            return np.array([x[0] - half, x[0] + half])
        mid = (x[1:] + x[:-1]) / 2
        return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def is_log_spaced(steps: Iterable[float]) -> bool:
    """True when a schedule looks geometric (1, 10, 100... or 0, 8, 64, 512...) rather than even.

    Decided by which of step or log(step) is closer to a straight line in the snapshot index,
    over at least three positive steps spanning a factor of 50 or more.
    """
    values = np.unique(np.asarray(list(steps), dtype=float))
    positive = values[values > 0]
    if len(positive) < 3 or positive[-1] / positive[0] < 50:
        return False
    index = np.arange(len(positive), dtype=float)
    return _r2(index, np.log(positive)) > _r2(index, positive)


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    total = ((y - y.mean()) ** 2).sum()
    return 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0


def compact_step(step: float) -> str:
    """0, 10, 100, 1k, 10k, 2.5M: short tick labels for training steps."""
    step = float(step)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(step) >= size:
            value = step / size
            return f"{value:.0f}{suffix}" if value == round(value) else f"{value:.3g}{suffix}"
    return f"{step:.0f}" if step == round(step) else f"{step:.3g}"

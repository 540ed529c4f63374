"""When to take a spectral snapshot of a training run.

A schedule is ``"log"`` (the default: dense early, where the dynamics are fast, plus an even fill so
that late events are not missed), an int ``N`` (every N steps) or an explicit list of steps.
Step 0 is the initialization. Decisions only: nothing here computes or writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

from hf_spectral.errors import SpectralError

ScheduleSpec = Union[str, int, Sequence[int]]

# Defaults of the "log" schedule: 8 points per decade of steps (ratio 10^(1/8) ≈ 1.33 between
# consecutive snapshots) and 10 evenly spaced points, e.g. 30 snapshots for a 400-step run and 48
# for 40,000 steps (docs/tracking.md).
PER_DECADE = 8
LINEAR = 10


def log_spaced_steps(max_steps: int | None, per_decade: int = PER_DECADE, linear: int = LINEAR) -> list[int]:
    """The steps of the ``"log"`` schedule for a run of ``max_steps`` steps, sorted.

    Step 0 (initialization), ``round(10^(i/per_decade))`` for i = 0, 1, ... up to ``max_steps``,
    ``linear`` evenly spaced steps ending at ``max_steps``, and ``max_steps`` itself.
    """
    if max_steps is None or max_steps < 0:
        raise SpectralError(f"log_spaced_steps needs the number of training steps, got {max_steps!r}")
    if per_decade < 1 or linear < 0:
        raise SpectralError(f"log_spaced_steps needs per_decade >= 1 and linear >= 0, got {per_decade}, {linear}")
    steps = {0, int(max_steps)}
    steps.update(_geometric(max_steps, per_decade))
    steps.update(_round(max_steps * j / linear) for j in range(1, linear + 1))
    return sorted(s for s in steps if 0 <= s <= max_steps)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half up: python's round() sends 2.5 to 2 and 7.5 to 8


def _geometric(limit: int, per_decade: int) -> list[int]:
    out, i = [], 0
    while True:
        step = _round(10 ** (i / per_decade))
        if step > limit:
            return out
        out.append(step)
        i += 1


@dataclass(frozen=True)
class Schedule:
    """A parsed snapshot schedule.

    kind:  ``log`` | ``every`` | ``steps``.  every: N for ``every``.  steps: the steps for ``steps``.
    """

    kind: str
    every: int = 0
    steps: tuple[int, ...] = ()

    @classmethod
    def parse(cls, spec: "ScheduleSpec | Schedule") -> "Schedule":
        """``"log"``, an int N (every N steps), a list of steps, or their string forms ``"50"``, ``"0,10,100"``."""
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text == "log":
                return cls("log")
            try:
                numbers = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise SpectralError(
                    f"schedule {spec!r} is not understood; use \"log\", an int N (every N steps) or a list of steps"
                ) from None
            if "," not in text and len(numbers) == 1:
                return cls.parse(numbers[0])
            return cls.parse(numbers)
        if isinstance(spec, bool):
            raise SpectralError(f"schedule {spec!r} is not understood; use \"log\", an int N or a list of steps")
        if isinstance(spec, int):
            if spec < 1:
                raise SpectralError(f"schedule every {spec} steps: N must be >= 1")
            return cls("every", every=int(spec))
        try:
            steps = sorted({int(s) for s in spec})
        except (TypeError, ValueError):
            raise SpectralError(f"schedule {spec!r} is not understood; use \"log\", an int N or a list of steps") from None
        if not steps or steps[0] < 0:
            raise SpectralError(f"schedule {list(spec)!r} must list at least one step, all >= 0")
        return cls("steps", steps=tuple(steps))

    def is_due(self, step: int, max_steps: int | None = None) -> bool:
        """Whether a snapshot is scheduled at ``step`` of a run of ``max_steps`` (None or <= 0: unknown).

        ``every`` and ``log`` also include the last step when ``max_steps`` is known; without it
        ``log`` falls back to the geometric points alone.
        """
        if self.kind == "steps":
            return step in self.steps
        known = max_steps is not None and max_steps > 0
        if known and step == max_steps:
            return True
        if self.kind == "every":
            return step % self.every == 0
        if known:
            return step in _log_set(int(max_steps))
        return step == 0 or step in _geometric(step, PER_DECADE)

    def planned(self, max_steps: int) -> list[int]:
        """Every step in [0, max_steps] at which a snapshot is due."""
        if self.kind == "log":
            return log_spaced_steps(max_steps)
        if self.kind == "every":
            return sorted(set(range(0, max_steps + 1, self.every)) | {max_steps})
        return [s for s in self.steps if s <= max_steps]

    def describe(self) -> str:
        if self.kind == "log":
            return "log"
        if self.kind == "every":
            return str(self.every)
        return ",".join(str(s) for s in self.steps)


_LOG_CACHE: dict[int, frozenset[int]] = {}


def _log_set(max_steps: int) -> frozenset[int]:
    if max_steps not in _LOG_CACHE:
        _LOG_CACHE[max_steps] = frozenset(log_spaced_steps(max_steps))
    return _LOG_CACHE[max_steps]


@dataclass
class OverheadBudget:
    """Keeps the time spent on snapshots within ``share`` of the projected training time.

    The projection is the measured time per training step (wall time outside snapshots) times the
    run's length in steps, so early snapshots — dense in the ``"log"`` schedule, where the paper's
    figures need them — are charged against the whole run's budget, not the few steps done so far.
    A snapshot is taken when the time spent so far plus the expected cost of this one and of the
    final snapshot (always taken) fits; the expected cost is the larger of the mean and the latest
    of the snapshots taken so far (a machine getting busier makes the mean too low).
    Without ``max_steps`` the projection is the training time elapsed so far.
    """

    share: float
    spent: float = 0.0  # seconds inside snapshots (and checkpoint summaries) so far
    taken: int = 0
    latest: float = 0.0  # seconds of the latest snapshot
    skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (isinstance(self.share, (int, float)) and 0 < self.share):
            raise SpectralError(f"max_overhead must be a positive share of training time (e.g. 0.05) or None, "
                                f"got {self.share!r}")

    def charge(self, seconds: float, snapshot: bool = True) -> None:
        """Count ``seconds`` of tracking work (a snapshot when ``snapshot``)."""
        self.spent += max(0.0, seconds)
        self.taken += int(snapshot)
        if snapshot:
            self.latest = max(0.0, seconds)

    def allows(self, steps_done: int, steps_total: int | None, train_seconds: float) -> bool:
        """Whether a snapshot now fits, after ``steps_done`` of ``steps_total`` steps (None: unknown)
        that took ``train_seconds`` outside snapshots."""
        if self.taken == 0 or steps_done <= 0:
            return True
        cost = max(self.spent / self.taken, self.latest)
        projected = train_seconds / steps_done * max(steps_total or 0, steps_done)
        reserve = cost if steps_total is not None and steps_done < steps_total else 0.0
        return self.spent + cost + reserve <= self.share * projected

"""When to take a spectral snapshot of a training run.

A schedule is ``"log"`` (the default: dense early, where the dynamics are fast, plus an even fill so
that late events are not missed), an int ``N`` (every N steps) or an explicit list of steps.
Step 0 is the initialization. Decisions only (what to take, and whether the overhead budget
allows it): nothing here computes or writes.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

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


# Step durations kept for the step-time estimate (the median of the latest ones), and the margin on a
# snapshot's expected cost (a machine getting busier makes the costs measured so far too low).
RECENT_STEPS = 16
COST_MARGIN = 1.25


@dataclass
class OverheadBudget:
    """Keeps the time spent tracking within ``share`` of the projected training time (shared by
    ``SpectralCallback`` and ``SpectralTracker``).

    Every second of tracking work is charged (snapshots, writing them, the log history, checkpoint
    summaries: whatever runs inside :meth:`timed`), and training time is wall time minus it. The
    projection is the training time so far plus the remaining steps times a step time that does not
    trust the first steps (warm-up, a burst of load): the smaller of the mean step time without the
    first step and the median of the latest ``RECENT_STEPS`` steps. Early snapshots — dense in the
    ``"log"`` schedule, where the paper's figures need them — are thus charged against the whole
    run's budget. A snapshot is taken when the time spent so far plus the expected cost of this one
    and of the final snapshot (always taken, so reserved from the start) fits; the expected cost is
    ``COST_MARGIN`` × the larger of the mean and the latest snapshot. Without ``max_steps`` the
    projection is the training time so far. The run's first step and its last are always taken.

    Snapshots computed in the background (``SpectralCallback(background=...)``) charge only what the
    training thread spends: copying the weights, waiting for the worker, emitting and writing. The
    worker's own seconds are noted with :meth:`note_worker`: the last snapshot is waited for whole (the
    record must be complete when ``train()`` returns), so the reserve for it is ``COST_MARGIN`` × the
    larger of the mean and the latest worker time, divided by ``last_threads`` (the threads the last one is
    split over; the worker's times were taken on one team of threads, beside training, so this stays an
    overestimate),
    when that is more than a snapshot's expected cost. A
    snapshot due while the worker is busy also costs the wait for it (:meth:`expected_wait`); before any
    background snapshot has finished that wait is unknown, and such a snapshot is skipped (waiting for the
    step-0 snapshot at step 1 would undo what the worker hides; measured in benchmarks/README.md).

    Use: ``start(step, max_steps)`` when training begins, ``tick(step)`` after every optimizer step,
    ``fits(step)`` to ask, ``with budget.timed(snapshot=True):`` around the work.
    """

    share: float
    spent: float = 0.0  # seconds of tracking work so far
    taken: int = 0
    latest: float = 0.0  # seconds of the latest snapshot
    skipped: list[int] = field(default_factory=list)
    start_step: int = 0
    max_steps: int | None = None
    _clock: float = 0.0  # perf_counter at start()
    _first: float | None = None  # training seconds of the first step
    _tick: tuple[int, float, float] | None = None  # (step, perf_counter, spent) at the latest tick
    _recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))
    worker_spent: float = 0.0  # seconds snapshots took in the background worker (not charged)
    worker_taken: int = 0
    worker_latest: float = 0.0
    last_threads: int = 1  # threads the last snapshot is split over (background.waiting_threads; set by the caller)

    def __post_init__(self) -> None:
        if not (isinstance(self.share, (int, float)) and not isinstance(self.share, bool) and 0 < self.share):
            raise SpectralError(f"max_overhead must be a positive share of training time (e.g. 0.05) or None, "
                                f"got {self.share!r}")

    def start(self, step: int, max_steps: int | None) -> None:
        """Begin a run at ``step`` (``max_steps`` None or <= 0: unknown length); forgets earlier runs."""
        self.spent, self.taken, self.latest, self.skipped = 0.0, 0, 0.0, []
        self.worker_spent, self.worker_taken, self.worker_latest = 0.0, 0, 0.0
        self.last_threads = 1
        self.start_step = int(step)
        self.max_steps = int(max_steps) if max_steps is not None and max_steps > 0 else None
        self._clock = time.perf_counter()
        self._first, self._tick = None, (self.start_step, self._clock, 0.0)
        self._recent.clear()

    def charge(self, seconds: float, snapshot: bool = True) -> None:
        """Count ``seconds`` of tracking work (a snapshot when ``snapshot``)."""
        self.spent += max(0.0, seconds)
        self.taken += int(snapshot)
        if snapshot:
            self.latest = max(0.0, seconds)

    def note_worker(self, seconds: float) -> None:
        """Note that a snapshot took ``seconds`` in the background worker (not charged: the training
        thread went on; it sets the reserve for the last snapshot, which is waited for)."""
        self.worker_spent += max(0.0, seconds)
        self.worker_taken += 1
        self.worker_latest = max(0.0, seconds)

    @contextlib.contextmanager
    def timed(self, snapshot: bool = False) -> Iterator[None]:
        """Charge the wall time of the block (a snapshot when ``snapshot``), also when it raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.charge(time.perf_counter() - started, snapshot)

    def tick(self, step: int) -> None:
        """Note that optimizer step ``step`` has ended (call it at every step, before ``due``)."""
        now = time.perf_counter()
        if self._tick is None:
            self._tick = (int(step), now, self.spent)
            return
        last_step, last_time, last_spent = self._tick
        if step > last_step:
            seconds = max(0.0, (now - last_time) - (self.spent - last_spent)) / (step - last_step)
            if self._first is None:
                self._first = seconds
            else:
                self._recent.append(seconds)
            self._tick = (int(step), now, self.spent)

    def train_seconds(self) -> float:
        """Wall time since ``start`` outside tracking work."""
        return max(0.0, time.perf_counter() - self._clock - self.spent)

    def step_seconds(self, steps_done: int, train_seconds: float) -> float:
        """The step time the projection uses: the smaller of the mean without the first step and the
        median of the latest steps (just the mean until two steps are known)."""
        if steps_done <= 0:
            return 0.0
        mean = train_seconds / steps_done
        if self._first is None or steps_done < 2:
            return mean
        mean_after_first = max(0.0, train_seconds - self._first) / (steps_done - 1)
        recent = statistics.median(self._recent) if self._recent else mean_after_first
        return min(mean, mean_after_first, recent)

    def fits(self, step: int, wait: float | None = 0.0) -> bool:
        """Whether a snapshot at ``step`` fits (the run's first and last steps always), ``wait``: the
        expected wait for the background worker before it can start (None: unknown, it does not fit).
        Deciding is all it does: the caller records a refusal with ``skipped.append(step)`` (see
        ``tracking.recorder.within_budget``, which also makes every process agree)."""
        if step == self.start_step or (self.max_steps is not None and step >= self.max_steps):
            return True
        if wait is None:
            return False
        total = self.max_steps - self.start_step if self.max_steps is not None else None
        train = self.train_seconds()
        done = step - self.start_step
        return self.allows(done, total, train, self.step_seconds(done, train), extra=wait)

    def expected_wait(self, elapsed: float) -> float | None:
        """The wait to expect for a background snapshot that has been computing for ``elapsed`` seconds:
        ``COST_MARGIN`` × the larger of the mean and the latest worker time, less ``elapsed``; None before
        any background snapshot has finished (then nothing says how long it will take)."""
        if not self.worker_taken:
            return None
        return max(0.0, self._worker_cost() - elapsed)

    def _worker_cost(self) -> float:
        return _expected_cost(self.worker_spent, self.worker_taken, self.worker_latest)

    def meta(self) -> dict[str, object]:
        """What a snapshot's meta records of the budget."""
        return {"max_overhead": self.share, "skipped_steps": list(self.skipped)}

    def allows(self, steps_done: int, steps_total: int | None, train_seconds: float,
               step_seconds: float | None = None, extra: float = 0.0) -> bool:
        """Whether a snapshot now fits, after ``steps_done`` of ``steps_total`` steps (None: unknown)
        that took ``train_seconds`` outside tracking; ``step_seconds``: the time per remaining step
        (default: the mean so far); ``extra``: seconds it costs beyond a snapshot's expected cost."""
        if self.taken == 0 or steps_done <= 0:
            return True
        cost = _expected_cost(self.spent, self.taken, self.latest)
        rate = train_seconds / steps_done if step_seconds is None else step_seconds
        remaining = max((steps_total or 0) - steps_done, 0)
        projected = train_seconds + remaining * rate
        # the last one is waited for whole, split over last_threads (the worker's times: one team, beside training)
        cost_last = max(cost, self._worker_cost() / max(1, self.last_threads)) if self.worker_taken else cost
        reserve = cost_last if steps_total is not None and steps_done < steps_total else 0.0
        return self.spent + cost + extra + reserve <= self.share * projected

    def summary(self) -> str | None:
        """The one warning line about skipped snapshots (None when none was skipped)."""
        if not self.skipped:
            return None
        return (f"hf_spectral: skipped {len(self.skipped)} of {len(self.skipped) + self.taken} scheduled spectral "
                f"snapshots (steps {_steps_text(self.skipped)}) to keep tracking within max_overhead={self.share:g} "
                f"of the training time ({self.spent:.1f} s spent tracking); pass max_overhead=None to take them all")


def _expected_cost(spent: float, taken: int, latest: float) -> float:
    """What the next snapshot is expected to cost: ``COST_MARGIN`` × the larger of the mean and the latest."""
    return COST_MARGIN * max(spent / taken, latest)


def _steps_text(steps: list[int], shown: int = 12) -> str:
    text = ", ".join(str(s) for s in steps[:shown])
    return text + (f", ... ({len(steps) - shown} more)" if len(steps) > shown else "")

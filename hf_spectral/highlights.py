"""The numbers worth telling about a ``Dynamics``: when a training metric crossed a threshold,
when the mean effective rank fell fastest, which layers changed most, when top singular vectors
settled. The report, the model card and the figures' markers all read them from here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hf_spectral.dynamics.steps import StepScale
from hf_spectral.dynamics.types import Dynamics
from hf_spectral.errors import SpectralError
from hf_spectral.status import STATUS_FLAGGED, STATUS_OK

ERANK = "normalized_effective_rank"
SETTLED = 0.9  # an agreement score (mean of the top-10 S_ii) at or above this counts as settled
# Smallest change of a mean normalized rank (in [0, 1]) that counts: the text prints 3 decimals.
RESOLUTION = 1e-3


def mean_erank(dyn: Dynamics) -> pd.Series:
    """Mean normalized effective rank per step (over matrices whose rank is defined), by step."""
    summary = dyn.summary
    column = f"mean_{ERANK}"
    if len(summary) and column in summary and summary[column].notna().any():
        series = summary.set_index("step")[column].astype(float)
    elif len(dyn.trajectories) and ERANK in dyn.trajectories:
        table = dyn.trajectories
        defined = table[table["status"] == STATUS_OK] if "status" in table else table
        series = defined.groupby("step")[ERANK].mean().astype(float)
    else:
        return pd.Series(dtype=float)
    return series.groupby(level=0).mean().sort_index()


def training_metrics(dyn: Dynamics) -> list[str]:
    """Names of the metrics in the training table, in first-seen order."""
    return list(dict.fromkeys(dyn.training["metric"])) if len(dyn.training) else []


def default_metric(dyn: Dynamics) -> str | None:
    """The validation accuracy to show against rank: eval_accuracy, else an eval_*accuracy (a
    validation split first), else any *accuracy; None when none is logged (a threshold such as
    0.9 means "reached" only for a score that rises, so losses are never picked by default)."""
    metrics = training_metrics(dyn)
    evals = [m for m in metrics if m.startswith("eval_") and m.endswith("accuracy")]
    for choice in (["eval_accuracy"], [m for m in evals if "val" in m], evals, [m for m in metrics if m.endswith("accuracy")]):
        found = [m for m in choice if m in metrics]
        if found:
            return found[0]
    return None


def metric_series(dyn: Dynamics, metric: str) -> pd.Series:
    """One training metric by step (the mean when a step logged it twice)."""
    table = dyn.training
    if not len(table):
        return pd.Series(dtype=float)
    if metric not in set(table["metric"]):
        raise SpectralError(
            f"training log has no metric {metric!r}; logged metrics: {_listing(training_metrics(dyn))}; pass one of them"
        )
    rows = table[table["metric"] == metric]
    return rows.groupby("step")["value"].mean().astype(float).sort_index()


def _listing(metrics: list[str]) -> str:
    """The user's own metrics by name; the callback's many spectral/* scalars as a count."""
    own = [m for m in metrics if not m.startswith("spectral/")]
    spectral = len(metrics) - len(own)
    return ", ".join(own) + (f" (and {spectral} spectral/* scalars)" if spectral else "")


def rank_noise(erank: pd.Series) -> float:
    """The run's noise for a fall of the mean rank between two consecutive snapshots.

    The largest *rise* between consecutive snapshots of the same run — a fall no larger than a
    rise the run also made is indistinguishable from its up-and-down — and never below
    :data:`RESOLUTION` (0.001, the precision the text prints: a "fall" from 0.770 to 0.770 is none).
    """
    values = erank.dropna().to_numpy(dtype=float)
    rises = np.diff(values)
    return max(RESOLUTION, float(rises.max())) if len(rises) else RESOLUTION


def key_events(dyn: Dynamics, metric: str | None = "auto", threshold: float = 0.9, *, scale: str = "auto",
               after: int | None = None) -> dict[str, Any]:
    """When ``metric`` first reached ``threshold`` and when the mean effective rank fell fastest.

    Returns a dict:
      metric, threshold, metric_step (first logged step with value >= threshold, or None),
      metric_final (last logged value);
      rank_drop_interval (a, b): the consecutive snapshots between which the mean normalized
      effective rank had its steepest negative slope; rank_drop_step = b; rank_drop_slope: that
      slope, per unit of ``slope_axis``: "log10(1 + step)" (per decade) when the schedule is
      log-spaced (``scale="auto"``) or ``scale="log"``, else "step"; None when rank never fell;
      erank_before / erank_after: the mean at a and b; erank_initial / erank_final;
      erank_noise: :func:`rank_noise`; only a fall larger than it counts (the steepest of those;
      None in the interval fields when none did: nothing changed measurably);
      lag: rank_drop_step - metric_step (negative: rank fell before the metric crossed);
      around_metric: :func:`rank_change_around` the metric_step (the rank change in a window
      around the crossing against the window before it, with ``measurable``: whether either
      change exceeds erank_noise, and ``coincides``: :func:`drop_coincides`), or None.
    ``after``: only drops between snapshots at or after this step count (e.g. the step where the
    training set was memorized, to look past the fast transient that follows the initialization).
    ``metric="auto"`` takes the validation accuracy :func:`default_metric` finds (eval_accuracy,
    else a validation split's eval_*accuracy, ...). A metric named but missing from a non-empty
    training log raises SpectralError (a typo should not read as "never crossed"); without a
    training log, with ``metric=None``, or "auto" finding no accuracy, the metric fields are None.
    """
    if metric == "auto":
        metric = default_metric(dyn)

    events: dict[str, Any] = {"metric": metric, "threshold": float(threshold), "metric_step": None, "metric_final": None}
    values = metric_series(dyn, metric) if metric else pd.Series(dtype=float)
    if len(values):
        above = values[values >= threshold]
        events["metric_step"] = int(above.index[0]) if len(above) else None
        events["metric_final"] = float(values.iloc[-1])

    erank = mean_erank(dyn).dropna()
    axis = StepScale.for_steps(erank.index, scale)
    events.update(
        slope_axis=axis.name, rank_drop_interval=None, rank_drop_step=None, rank_drop_slope=None,
        erank_before=None, erank_after=None, erank_noise=rank_noise(erank),
        erank_initial=float(erank.iloc[0]) if len(erank) else None,
        erank_final=float(erank.iloc[-1]) if len(erank) else None,
    )
    if len(erank) >= 2:
        x = axis.x(erank.index.to_numpy(dtype=float))
        slopes = np.diff(erank.to_numpy()) / np.diff(x)
        if after is not None:
            slopes = np.where(erank.index[:-1].to_numpy() >= after, slopes, np.inf)
        # only a fall larger than the run's noise is an event; the steepest of those
        slopes = np.where(-np.diff(erank.to_numpy()) > events["erank_noise"], slopes, np.inf)
        i = int(np.argmin(slopes))
        if np.isfinite(slopes[i]) and slopes[i] < 0:
            a, b = int(erank.index[i]), int(erank.index[i + 1])
            events.update(
                rank_drop_interval=(a, b), rank_drop_step=b, rank_drop_slope=float(slopes[i]),
                erank_before=float(erank.iloc[i]), erank_after=float(erank.iloc[i + 1]),
            )
    events["lag"] = (
        events["rank_drop_step"] - events["metric_step"]
        if events["rank_drop_step"] is not None and events["metric_step"] is not None else None
    )
    around = rank_change_around(erank, events["metric_step"]) if events["metric_step"] is not None else None
    if around is not None:
        around["measurable"] = max(abs(around["change"]), abs(around["change_before"])) > events["erank_noise"]
        around["coincides"] = drop_coincides(around)
    events["around_metric"] = around
    return events


AROUND = 0.05  # half-width of the window around an event, as a share of the run's steps
# The paper's signature (definitions §7, finding 3): the rank falls at least this many times as fast
# around the metric's crossing as in the window before it (10.1x at the paper's grokking setting,
# 0.8-1.7x at the old demo setting, where the rank falls steadily through the jump).
COINCIDES = 3.0


def drop_coincides(around: dict[str, Any]) -> bool:
    """Whether the rank drop coincides with the event: a measurable fall around it that is at least
    :data:`COINCIDES` times the fall in the window before (or follows a window where it did not fall)."""
    if not around.get("measurable", True) or around["change"] >= 0:
        return False
    return around["change_before"] >= 0 or around["change"] / around["change_before"] >= COINCIDES


def rank_change_around(erank: pd.Series, step: int, half_window: int | None = None) -> dict[str, Any] | None:
    """How much the mean effective rank changed around ``step`` against the equally long window
    just before: does rank fall *at* the event, or did it fall as fast before it?

    ``erank``: mean normalized effective rank by step (:func:`mean_erank`). ``half_window``
    (default: 5% of the last step) sets the window [step − h, step + h] and the window before it,
    [step − 3h, step − h]; each edge is the snapshot nearest to it. Returns ``window``,
    ``window_before`` (step pairs), ``change``, ``change_before`` (erank at the end − at the start)
    and ``ratio`` = change / change_before (None when change_before is 0); None when the
    edges do not fall on three distinct snapshots.
    """
    erank = erank.dropna()
    if len(erank) < 3:
        return None
    steps = erank.index.to_numpy(dtype=float)
    h = half_window if half_window is not None else max(1, round(AROUND * steps[-1]))
    edges = [int(erank.index[int(np.argmin(np.abs(steps - s)))]) for s in (step - 3 * h, step - h, step + h)]
    if len(set(edges)) < 3:
        return None
    a, b, c = (float(erank.loc[e]) for e in edges)
    change, before = c - b, b - a
    return {
        "window": (edges[1], edges[2]), "window_before": (edges[0], edges[1]),
        "change": change, "change_before": before, "ratio": change / before if before else None,
    }


def settled_steps(dyn: Dynamics, level: float = SETTLED) -> pd.Series:
    """Per matrix: the first step from which the agreement score with the reference stays >= level
    (NaN when it never does before the reference itself)."""
    scores = dyn.agreement_scores
    if not len(scores):
        return pd.Series(dtype=float)
    scores = scores[scores["reference_kind"] == "reference"] if "reference_kind" in scores else scores
    reference = _reference_step(dyn)
    out = {}
    for matrix, rows in scores.groupby("matrix", sort=False):
        rows = rows.sort_values("step")
        if reference is not None:
            rows = rows[rows["step"] != reference]  # the reference agrees with itself: no information
        ok = (rows["score"].astype(float) >= level).to_numpy()
        # the first index from which every later entry is settled
        tail = np.flatnonzero(~ok)
        first = 0 if not len(tail) else tail[-1] + 1
        out[matrix] = float(rows["step"].iloc[first]) if first < len(rows) else math.nan
    return pd.Series(out, dtype=float)


def layer_changes(dyn: Dynamics) -> pd.DataFrame:
    """One row per matrix (model order): shape, first/last erank, srank and σ_max, the change of
    erank, the first-step agreement score, the step its top vectors settled, any flag seen."""
    table = dyn.trajectories
    columns = ["matrix", "kind", "shape", "erank_first", "erank_last", "erank_change", "srank_first",
               "srank_last", "sigma_max_first", "sigma_max_last", "agreement_first", "settled_step", "flags", "flagged"]
    if not len(table):
        return pd.DataFrame(columns=columns)
    table = table.sort_values("step", kind="stable")
    rows = []
    settled = settled_steps(dyn)
    first_scores = _first_scores(dyn)
    for matrix, group in table.groupby("matrix", sort=False):
        def first_last(column: str) -> tuple[float, float]:
            if column not in group:
                return math.nan, math.nan
            values = group[column].astype(float).dropna()
            return (float(values.iloc[0]), float(values.iloc[-1])) if len(values) else (math.nan, math.nan)

        e0, e1 = first_last(ERANK)
        s0, s1 = first_last("normalized_stable_rank")
        n0, n1 = first_last("spectral_norm")
        flags = sorted({str(f) for f in group.get("flag", pd.Series(dtype=object)).dropna() if str(f) not in ("", STATUS_OK, "None")})
        first = group.iloc[0]
        rows.append({
            "matrix": matrix,
            "kind": first.get("kind", ""),
            "shape": f"{int(first['rows'])}×{int(first['cols'])}" if "rows" in group and pd.notna(first.get("rows")) else "",
            "erank_first": e0, "erank_last": e1, "erank_change": e1 - e0,
            "srank_first": s0, "srank_last": s1, "sigma_max_first": n0, "sigma_max_last": n1,
            "agreement_first": first_scores.get(matrix, math.nan),
            "settled_step": settled.get(matrix, math.nan),
            "flags": ", ".join(flags),
            "flagged": bool((group["status"] == STATUS_FLAGGED).any()) if "status" in group else False,
        })
    order = {name: i for i, name in enumerate(dyn.matrices)}
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values("matrix", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def summary_lines(dyn: Dynamics, metric: str | None = None, threshold: float = 0.9) -> list[str]:
    """A few plain-text sentences on what changed (no markup: callers escape for HTML/Markdown)."""
    steps = dyn.steps
    matrices = dyn.matrices
    if not steps or not matrices:
        return ["No snapshots with decomposed matrices: nothing to summarize."]
    changes = layer_changes(dyn)
    flagged = int(changes["flagged"].sum())
    if dyn.meta.get("step_is_position"):  # positions in the series, not training steps: never call them steps
        span = "1 snapshot (training step unknown)" if len(steps) == 1 else f"{len(steps)} snapshots (training steps unknown)"
    else:
        span = f"1 snapshot at step {_n(steps[0])}" if len(steps) == 1 else f"{len(steps)} snapshots from step {_n(steps[0])} to step {_n(steps[-1])}"
    lines = [
        f"{span}; {len(matrices)} weight matrices"
        + (f", {flagged} with undefined metrics at some step (flagged; shown as gaps)." if flagged else ".")
    ]
    if len(steps) == 1:
        erank = mean_erank(dyn).dropna()
        if len(erank):
            lines.append(f"Mean normalized effective rank {erank.iloc[0]:.3f}. A single snapshot: nothing changes over time.")
        return lines
    erank = mean_erank(dyn).dropna()
    if len(erank) >= 2 and erank.iloc[0] > 0:
        e0, e1 = erank.iloc[0], erank.iloc[-1]
        lines.append(f"Mean normalized effective rank went from {e0:.3f} to {e1:.3f} ({(e1 - e0) / e0:+.1%}).")
    valid = changes.dropna(subset=["erank_change"])
    falls = valid[valid["erank_change"] < -RESOLUTION].nsmallest(3, "erank_change")  # 0.804 → 0.804 is no drop
    if len(falls):
        listed = ", ".join(f"{r.matrix} ({r.erank_first:.3f} → {r.erank_last:.3f})" for r in falls.itertuples())
        lines.append(f"Largest rank drops: {listed}.")
    rises = valid[valid["erank_change"] > 0.01]
    if len(rises):
        top = rises.nlargest(1, "erank_change").iloc[0]
        lines.append(f"Rank rose in {len(rises)} matri{'ces' if len(rises) != 1 else 'x'}, most in {top['matrix']} "
                     f"({top['erank_first']:.3f} → {top['erank_last']:.3f}).")
    grown = valid.assign(growth=valid["sigma_max_last"] / valid["sigma_max_first"]).replace([np.inf, -np.inf], np.nan).dropna(subset=["growth"])
    if len(grown) and grown["growth"].max() >= 1 + RESOLUTION:  # "×1.00" tells nothing
        top = grown.nlargest(1, "growth").iloc[0]
        lines.append(f"The top singular value grew most in {top['matrix']} ({top['sigma_max_first']:.3g} → {top['sigma_max_last']:.3g}, ×{top['growth']:.2f}).")
    settled = changes["settled_step"].dropna()
    if len(changes) and len(dyn.agreement_scores):
        if len(settled) and settled.min() == settled.max():
            lines.append(f"Top singular vectors settled (agreement with the reference ≥ {SETTLED}) in {len(settled)} of "
                         f"{len(changes)} matrices, all from step {_n(settled.min())}.")
        elif len(settled):
            early = changes.loc[settled.idxmin()]
            late = changes.loc[settled.idxmax()]
            lines.append(
                f"Top singular vectors settled (agreement with the reference ≥ {SETTLED}) in {len(settled)} of "
                f"{len(changes)} matrices, at a median step of {_n(settled.median())}; first {early['matrix']} "
                f"(step {_n(early['settled_step'])}), last {late['matrix']} (step {_n(late['settled_step'])})."
            )
        else:
            lines.append(f"No matrix's top singular vectors settled (agreement ≥ {SETTLED}) before the reference snapshot.")
    metric = metric or default_metric(dyn)
    events = key_events(dyn, metric, threshold)  # metric None: rank events only
    if metric and math.isfinite(threshold):  # math.inf: a metric without a target
        if events["metric_step"] is not None:
            lines.append(f"{metric} first reached {threshold:g} at step {_n(events['metric_step'])}.")
        else:
            final = events["metric_final"]
            lines.append(f"{metric} never reached {threshold:g}" + (f" (last value {final:.3g})." if final is not None else "."))
    if events["rank_drop_interval"] is not None:
        a, b = events["rank_drop_interval"]
        text = (f"Mean effective rank fell fastest between steps {_n(a)} and {_n(b)} "
                f"({events['erank_before']:.3f} → {events['erank_after']:.3f})")
        crossed = events["metric_step"]
        if crossed is not None:
            if a <= crossed <= b:
                text += f", the interval in which {metric} crossed {threshold:g}"
            else:
                gap = crossed - b if b < crossed else a - crossed
                text += f", {_n(gap)} steps {'before' if b < crossed else 'after'} {metric} crossed {threshold:g}"
        lines.append(text + ".")
    elif len(mean_erank(dyn).dropna()) >= 2:
        lines.append(f"The mean effective rank did not fall measurably between any two snapshots (no drop larger "
                     f"than the run's noise, {events['erank_noise']:.3f}).")
    around = events.get("around_metric")
    if around is not None and not around["measurable"]:
        (a, b) = around["window"]
        lines.append(f"Around that crossing (steps {_n(a)}–{_n(b)}) the mean effective rank did not change measurably "
                     f"(less than the run's noise, {events['erank_noise']:.3f}).")
    elif around is not None:
        (a, b), (c, _) = around["window"], around["window_before"]
        verdict = "coincides" if drop_coincides(around) else "does not coincide"
        text = (f"The rank drop {verdict} with that crossing{_rate(around)}: around it (steps {_n(a)}–{_n(b)}) "
                f"the mean effective rank changed by {around['change']:+.3f}, against {around['change_before']:+.3f} "
                f"in the {_n(a - c)} steps before")
        lines.append(text + ".")
    alpha = alpha_line(dyn, events)
    if alpha:
        lines.append(alpha)
    return lines


def rate_before(around: dict[str, Any], times: str = "×") -> str:
    """` (10.1× the rate before)` when the rank fell in both windows (``times``: the sign, "x" on the
    console), else ``."""
    if around["change"] < 0 and around["change_before"] < 0 and around["ratio"] is not None:
        return f" ({around['ratio']:.1f}{times} the rate before)"
    return ""


def _rate(around: dict[str, Any]) -> str:
    """:func:`rate_before`, or `` (the rank did not fall in the window before)`` when only the second fell."""
    if around["change"] < 0 and around["change_before"] >= 0:
        return " (the rank did not fall in the window before)"
    return rate_before(around)


def alpha_line(dyn: Dynamics, events: dict[str, Any]) -> str | None:
    """How the mean power-law exponent α moved (first → at the metric crossing → last), or None."""
    summary = dyn.summary
    if "mean_alpha" not in summary:
        return None
    alpha = summary.set_index("step")["mean_alpha"].astype(float).dropna().sort_index()
    if not len(alpha):
        return None
    from hf_spectral.metrics.heavy_tail import ALPHA_BAND  # here: plain highlights need no torch

    low, high = ALPHA_BAND
    text = f"Mean power-law exponent α (weightwatcher's fit; {low:g}–{high:g} read as well trained) went from {alpha.iloc[0]:.2f} to {alpha.iloc[-1]:.2f}"
    crossed = events.get("metric_step")
    if crossed is not None and (alpha.index <= crossed).any():
        text += f", {alpha[alpha.index <= crossed].iloc[-1]:.2f} when {events['metric']} crossed {events['threshold']:g}"
    undefined = int(summary["alpha_undefined"].max()) if "alpha_undefined" in summary and len(summary) else 0
    if undefined:
        text += f"; up to {undefined} matri{'ces' if undefined != 1 else 'x'} without a fit (their heavy_tail_flag says why), left out of the mean"
    return text + "."


def _reference_step(dyn: Dynamics) -> float | None:
    if dyn.meta.get("reference_step") is not None:
        return float(dyn.meta["reference_step"])
    scores = dyn.agreement_scores
    if not len(scores) or "reference" not in scores:
        return None
    reference = scores["reference"].dropna()
    if not len(reference):
        return None
    label = reference.iloc[0]
    match = dyn.summary[dyn.summary["label"] == label] if "label" in dyn.summary else pd.DataFrame()
    return float(match["step"].iloc[0]) if len(match) else None


def _first_scores(dyn: Dynamics) -> dict[str, float]:
    scores = dyn.agreement_scores
    if not len(scores):
        return {}
    if "reference_kind" in scores:
        scores = scores[scores["reference_kind"] == "reference"]
    first = scores.sort_values("step", kind="stable").groupby("matrix", sort=False).first()
    return first["score"].astype(float).to_dict()


def _n(step: float) -> str:
    """A step as written in text: 1,500 (not 1500.0)."""
    return f"{int(step):,}" if float(step) == int(step) else f"{step:,.1f}"

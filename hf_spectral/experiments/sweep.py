"""Weight-decay sweeps (paper finding 5): one recipe run per (weight decay, seed), each its own process, into
``<output>/wd-<v>-seed-<s>/``; then one table over the runs — effective rank and the norm over time, the final
norm and eval metric per weight decay, and norm collapse flagged.

A run counts as finished when its folder holds ``sweep_run.json`` (written after the recipe exits 0), so
an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from hf_spectral.errors import SpectralError
from hf_spectral.atomic import atomic_file

logger = logging.getLogger(__name__)

DONE_FILE = "sweep_run.json"
RECORD = "spectral"  # the folder SpectralCallback / SpectralTracker write inside a run's output_dir
COLLAPSE_FACTOR = 10.0  # a norm that fell by more than this, with a loss that did not fall, has collapsed
# "Did not fall": the final training loss is above this share of the first logged one (a collapsed run's loss
# stays at chance, ln(classes), give or take a percent).
LOSS_KEPT = 0.9
# A collapsed norm is spiky (Adam's normalized steps push it up, the decay crushes it again: 0.4 to 9 within
# 300 steps at weight decay 100), so the norm "at the end" is the median over the last quarter of the snapshots.
END_SHARE = 0.25


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its weight decay, seed and output folder."""

    weight_decay: float
    seed: int
    folder: Path

    @property
    def done(self) -> bool:
        return (self.folder / DONE_FILE).is_file()


def plan_sweep(output: str | Path, weight_decays: Sequence[float], seeds: Sequence[int] = (0,)) -> list[SweepRun]:
    """The runs of a sweep, weight decay outermost: ``<output>/wd-<v>-seed-<s>``."""
    if not weight_decays:
        raise SpectralError("a sweep needs at least one --weight_decay value")
    root = Path(output)
    return [SweepRun(float(v), int(s), root / f"wd-{float(v):g}-seed-{int(s)}") for v in weight_decays for s in seeds]


def run_sweep(recipe: str | Path, output: str | Path, weight_decays: Sequence[float], seeds: Sequence[int] = (0,),
              recipe_args: Sequence[str] = (), launcher: str | None = None) -> list[SweepRun]:
    """Run ``recipe`` (a script taking ``--output_dir --weight_decay --seed``, as every hf_spectral recipe
    does) once per run not finished yet; ``launcher`` prefixes the command (e.g. ``"accelerate launch
    --multi_gpu --num_processes 2"``; default: this Python). Stops at the first failing run, with its folder."""
    script = Path(recipe)
    if not script.is_file():
        raise SpectralError(f"no recipe script {recipe}: pass the path of a recipe, e.g. recipes/grokking.py")
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    runs = plan_sweep(output, weight_decays, seeds)
    for i, run in enumerate(runs, 1):
        if run.done:
            logger.warning("sweep %d/%d: %s is finished, skipped", i, len(runs), run.folder)
            continue
        command = [*prefix, str(script), "--output_dir", str(run.folder), "--weight_decay", f"{run.weight_decay:g}",
                   "--seed", str(run.seed), *recipe_args]
        logger.warning("sweep %d/%d: weight decay %g, seed %d → %s", i, len(runs), run.weight_decay, run.seed, run.folder)
        start = time.perf_counter()
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise SpectralError(f"{run.folder}: the recipe exited with status {code} (command: {shlex.join(command)}); "
                                "fix it and run the sweep again: finished runs are skipped")
        run.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(run.folder / DONE_FILE) as tmp:
            tmp.write_text(json.dumps({"command": command, "wall_seconds": time.perf_counter() - start,
                                       "weight_decay": run.weight_decay, "seed": run.seed}, indent=1))
    return runs


def sweep_tables(runs: Sequence[SweepRun], metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tables over the finished runs' spectral records:

    ``over_time``: weight_decay, seed, step, mean_normalized_effective_rank, total_frobenius (Σ over matrices
    of ‖W‖_F).
    ``runs``: one row per run: weight_decay, seed, erank_init/final, norm_init/final, norm_end (the median over
    the last quarter of the snapshots), norm_ratio (init / end), loss_init/final (training loss), metric,
    metric_final, collapsed (``norm_collapsed``).
    """
    from hf_spectral.series import load_series
    from hf_spectral.store import STATUS_OK

    over_time, rows = [], []
    for run in runs:
        record = run.folder / RECORD
        if not record.is_dir():
            raise SpectralError(f"{run.folder}: no {RECORD}/ record; run the recipe with spectral tracking on")
        # the snapshots' own tables and the run's log history: nothing is decomposed or compared again
        snapshots = load_series(record)
        frame = pd.DataFrame([{"step": s.meta.get("step"),
                               "mean_normalized_effective_rank": s.summary().get("mean_normalized_effective_rank"),
                               "total_frobenius": float(s.table.loc[s.table["status"] == STATUS_OK, "frobenius_norm"].sum())}
                              for s in snapshots])
        over_time.append(frame.assign(weight_decay=run.weight_decay, seed=run.seed))
        history = snapshots[-1].meta.get("log_history") or []
        losses = _logged(history, "loss")
        chosen = metric or _default_metric(history)
        final_metric = _logged(history, chosen) if chosen else []
        erank, norms = frame["mean_normalized_effective_rank"], frame["total_frobenius"]
        norm_init, norm_final = float(norms.iloc[0]), float(norms.iloc[-1])
        loss_init = losses[0] if losses else float("nan")
        loss_final = losses[-1] if losses else float("nan")
        norm_end = end_value(norms.tolist())
        ratio = norm_init / norm_end if norm_end > 0 else float("inf")
        rows.append({
            "weight_decay": run.weight_decay, "seed": run.seed,
            "erank_init": float(erank.iloc[0]), "erank_final": float(erank.iloc[-1]),
            "norm_init": norm_init, "norm_final": norm_final, "norm_end": norm_end, "norm_ratio": ratio,
            "loss_init": loss_init, "loss_final": loss_final,
            "metric": chosen, "metric_final": final_metric[-1] if final_metric else float("nan"),
            "collapsed": norm_collapsed(norms.tolist(), loss_init, loss_final),
        })
    columns = ["weight_decay", "seed", "step", "mean_normalized_effective_rank", "total_frobenius"]
    return pd.concat(over_time, ignore_index=True)[columns], pd.DataFrame(rows)


def end_value(values: Sequence[float]) -> float:
    """The median over the last quarter (``END_SHARE``) of ``values``, at least the last one."""
    tail = list(values)[-max(1, round(len(values) * END_SHARE)):]
    return float(pd.Series(tail, dtype=float).median())


def norm_collapsed(norms: Sequence[float], loss_init: float, loss_final: float) -> bool:
    """Norm collapse: Σ‖W‖_F at the end (``end_value``) is more than ``COLLAPSE_FACTOR`` × below the first
    snapshot's, while the training loss stayed above ``LOSS_KEPT`` of its first logged value."""
    end = end_value(norms)
    fell = end <= 0 or norms[0] / end > COLLAPSE_FACTOR
    return bool(fell and not loss_final <= LOSS_KEPT * loss_init)


def _logged(history: list[dict], metric: str) -> list[float]:
    """The values of ``metric`` in a Trainer log history, in step order."""
    entries = sorted((e for e in history if isinstance(e.get(metric), (int, float))), key=lambda e: e.get("step", 0))
    return [float(e[metric]) for e in entries]


def _default_metric(history: list[dict]) -> str | None:
    """The run's eval accuracy when logged, else its eval loss, else none."""
    names = {key for entry in history for key in entry}
    for preferred in sorted(n for n in names if n.startswith("eval_") and n.endswith("accuracy")) + ["eval_loss"]:
        if preferred in names:
            return preferred
    return None

#!/usr/bin/env python
"""The science check of the grokking demo: 3 seeds at the demo's weight decay and the weight-decay-0 control.

Runs `recipes/grokking.py --preset demo` (the `make demo` setting) once per run, one after another,
each in a fresh process, and writes a markdown table into docs/grokking.md between the markers
`<!-- benchmarks/grokking_seeds.py: start -->` and `<!-- benchmarks/grokking_seeds.py: end -->`:
(seed, weight decay, step where validation accuracy first reached 90%, fastest drop of the mean
normalized effective rank, their lag, the rank change around the jump against the window before,
final validation accuracy, mean effective rank init → final,
Fourier top-5 share of the embedding, wall time). Paper finding: with weight decay the validation
jump coincides with a sharp rank drop; without it neither happens within the same budget.

    python benchmarks/grokking_seeds.py                       # 4 runs, ~15-20 min on 2 idle cores
    python benchmarks/grokking_seeds.py --runs 0:1 --no-docs  # one run, print the table only
    python benchmarks/grokking_seeds.py --images docs/images  # also the README pictures (seed 0 + all runs)
    python benchmarks/grokking_seeds.py --from-json runs.json --images docs/images   # redo table/pictures only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "grokking.py"
DOCS = ROOT / "docs" / "grokking.md"
START = "<!-- benchmarks/grokking_seeds.py: start -->"
END = "<!-- benchmarks/grokking_seeds.py: end -->"
DEFAULT_RUNS = ["0:3", "1:3", "2:3", "0:0"]  # seed:weight_decay (the demo preset: 3)


def run_recipe(flags: list[str], folder: Path, threads: int, label: str) -> dict:
    """`recipes/grokking.py FLAGS --output_dir FOLDER` in a fresh process; its summary.json plus the
    process's wall time and the load average around it."""
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, str(RECIPE), *flags, "--output_dir", str(folder), "--disable_tqdm", "true"]
    if threads:
        command += ["--num_threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    with open(folder.with_name(folder.name + ".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    summary = json.loads((folder / "summary.json").read_text())
    summary.update(process_wall_s=wall, load_before=load, load_after=os.getloadavg()[0], folder=str(folder),
                   finished_at=time.strftime("%Y-%m-%d %H:%M"))
    return summary


def run(seed: int, weight_decay: float, out: Path, threads: int) -> dict:
    """One demo run with this seed and weight decay (see run_recipe)."""
    flags = ["--preset", "demo", "--seed", str(seed), "--weight_decay", str(weight_decay)]
    summary = run_recipe(flags, out / f"seed{seed}_wd{weight_decay:g}", threads, "grokking_seeds")
    print(f"[grokking_seeds]   {row_text(summary)}", flush=True)
    return summary


def row_text(s: dict) -> str:
    e = s["events"]
    return (f"grok step {s['metric_step']}, rank drop {e['rank_drop_interval']}, final val acc "
            f"{s['final_metric']:.3f}, erank {e['erank_initial']:.3f} -> {e['erank_final']:.3f}, "
            f"{s['process_wall_s']:.0f} s")


FOURIER = "Fourier top-5 share of the embedding"  # the recipe's label of spectral/fourier/top5_fraction


def fourier(s: dict, when: str) -> float:
    """The Fourier top-5 share at ``when`` ("initial", "at_metric", "final") from a run's summary.json."""
    return s["measures"][FOURIER][when]


def table(results: list[dict]) -> str:
    """The markdown table, one row per run."""
    step = lambda x: "none" if x is None else f"{x:,}"  # noqa: E731 - a one-line formatter
    lines = [
        (
            "| seed | weight decay | val acc ≥ 90% at step | fastest rank drop: steps (mean erank) | lag | "
            "erank change around the jump vs the window before | "
            "final val acc | mean erank: init → at the jump → final | Fourier top-5: init → final | wall s (training) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results:
        e, a = s["events"], s["args"]
        drop = ("none" if e["rank_drop_interval"] is None else
                f"{e['rank_drop_interval'][0]:,}–{e['rank_drop_interval'][1]:,} "
                f"({e['erank_before']:.3f} → {e['erank_after']:.3f})")
        lag = "—" if e["lag"] is None else f"{e['lag']:+,}"
        around = e.get("around_metric")
        around = "—" if around is None else (
            f"{around['change']:+.3f} (steps {around['window'][0]:,}–{around['window'][1]:,}) vs "
            f"{around['change_before']:+.3f}" + (f" ({around['ratio']:.1f}×)" if around["change_before"] < 0 and around["ratio"]
                                                 else " (flat or rising before)"))
        grok = step(s["metric_step"])
        jump = "" if s["erank_at_metric"] is None or s["metric_step"] is None else f"{s['erank_at_metric']:.3f} → "
        lines.append(
            f"| {a['seed']} | {a['weight_decay']:g} | {'**' + grok + '**' if s['metric_step'] is not None else grok} | "
            f"{drop} | {lag} | {around} | {s['final_metric']:.3f} | {e['erank_initial']:.3f} → {jump}**{e['erank_final']:.3f}** | "
            f"{fourier(s, 'initial'):.3f} → {fourier(s, 'final'):.3f} | {s['process_wall_s']:.0f} ({s['train_seconds']:.0f}) |"
        )
    return "\n".join(lines)


def section(results: list[dict], threads: int) -> str:
    import torch

    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    a = results[0]["args"]
    h = round(0.05 * a["max_steps"])  # hf_spectral.highlights.AROUND
    return "\n".join([
        START,
        (
            f"Measured {results[-1].get('finished_at', '')} by `python benchmarks/grokking_seeds.py`: `recipes/grokking.py "
            f"--preset demo` (a + b mod {a['p']}, {a['train_fraction']:.0%} of the pairs for training, AdamW lr "
            f"{a['learning_rate']:g}, {a['max_steps']:,} full-batch steps, evaluation every {a['eval_steps']} steps, "
            f"spectral snapshots at `{a['spectra_schedule']}`) with the seed and weight decay of each row, one run "
            f"at a time, each in a fresh process; {platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {threads or 'default'} torch thread(s) per run; 1-min load average "
            f"{min(loads):.2f}–{max(loads):.2f} (the run's own process included)."
        ),
        "",
        table(results),
        "",
        (
            "Lag = end of the fastest-drop interval − the step validation accuracy first reached 90% "
            "(`hf_spectral.highlights.key_events`). Around the jump: the change of the mean effective rank from "
            f"{h:,} steps before to {h:,} after that step (5% of the run each side), against the {2 * h:,} steps "
            "before (`rank_change_around`), and their ratio. Wall s: the whole process (imports, training, report); in "
            "parentheses `trainer.train()` alone."
        ),
        END,
    ])


def write_docs(text: str, path: Path = DOCS, start: str = START, end: str = END) -> None:
    """Replace the section of ``path`` between the markers ``start`` and ``end`` (``text`` includes them;
    appended when the markers are missing)."""
    doc = path.read_text()
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + text + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(doc)
    os.replace(tmp, path)


def seeds_figure(results: list[dict], path: Path) -> None:
    """Every run's validation accuracy (solid) and mean normalized effective rank (dashed) on one step axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, s in enumerate(results):
        history = json.loads((Path(s["folder"]) / "spectral" / "log_history.json").read_text())
        val = [e for e in history if "eval_val_accuracy" in e]
        rank = [e for e in history if "spectral/mean_erank" in e]
        a = s["args"]
        color = "0.45" if a["weight_decay"] == 0 else f"C{i}"
        ax.plot([e["step"] for e in val], [e["eval_val_accuracy"] for e in val], color=color, lw=1.8,
                label=f"seed {a['seed']}, wd {a['weight_decay']:g}")
        ax.plot([e["step"] for e in rank], [e["spectral/mean_erank"] for e in rank], color=color, lw=1.4, ls="--")
        if s["metric_step"] is not None:
            ax.axvline(s["metric_step"], color=color, lw=0.8, ls=":")
    ax.axhline(0.9, color="0.6", lw=0.6, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy / normalized effective rank")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    decay = max(r["args"]["weight_decay"] for r in results)
    ax.set_title(f"Grokking demo (a + b mod {a['p']}, {a['train_fraction']:.0%} train): weight decay {decay:g}, 3 seeds, "
                 "against weight decay 0", fontsize=10)
    runs = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8, title="run")
    ax.add_artist(runs)
    styles = [Line2D([], [], color="0.2", lw=1.8), Line2D([], [], color="0.2", lw=1.4, ls="--"),
              Line2D([], [], color="0.2", lw=0.8, ls=":")]
    ax.legend(styles, ["validation accuracy", "mean normalized\neffective rank", "val acc ≥ 90%"], loc="lower left",
              bbox_to_anchor=(1.01, 0.0), frameon=False, fontsize=8, title="line")
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legends sit outside the axes


def images(results: list[dict], folder: Path) -> None:
    """The README pictures: seed 0's flagship figure and rank heat map, and all runs on one axis."""
    folder.mkdir(parents=True, exist_ok=True)
    first = Path(results[0]["folder"])
    shutil.copy(first / "grokking.png", folder / "grokking_demo.png")
    shutil.copy(first / "report" / "figures" / "rank_heatmap.png", folder / "grokking_erank_heatmap.png")
    seeds_figure(results, folder / "grokking_seeds.png")
    print(f"[grokking_seeds] wrote grokking_demo.png, grokking_erank_heatmap.png, grokking_seeds.png to {folder}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="seed:weight_decay pairs (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / ".benchmarks_out" / "grokking"), help="run folders and logs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the recipe's default)")
    parser.add_argument("--no-docs", action="store_true", help="print the table, leave docs/grokking.md alone")
    parser.add_argument("--images", default=None, help="copy the first run's figures here (README pictures)")
    parser.add_argument("--json", default=None, help="also write all summaries to this file")
    parser.add_argument("--from-json", default=None, help="reuse the summaries of an earlier --json: no training")
    args = parser.parse_args(argv)

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        for item in args.runs:
            seed, weight_decay = item.split(":")
            results.append(run(int(seed), float(weight_decay), out, args.threads))
    text = section(results, args.threads)
    print("\n" + text)
    if not args.no_docs:
        write_docs(text)
        print(f"[grokking_seeds] wrote the table into {DOCS}")
    if args.images:
        images(results, Path(args.images))
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()

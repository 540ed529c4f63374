"""Where the time of one ``hf-spectral analyze`` process goes on the GPT-2-small-shaped checkpoint
(``benchmarks/analyze.py`` builds it): interpreter start, imports, resolving, planning, reading the
tensors, the singular-value kernel, metrics, assembling the table and writing the snapshot; and the
whole CLI process against the kernel alone (target: ≤ 1.2×).

Each round runs, interleaved, in fresh processes:
  profile  the analyze path stage by stage (the engine's own functions, one after the other)
  cli      ``python -m hf_spectral analyze FOLDER --output ... --no-progress`` (wall measured by the parent)
  dry_run  ``python -m hf_spectral analyze FOLDER --dry-run`` (its predicted kernel and whole-process seconds)
Medians over rounds; the machine is shared, so only ratios within one run mean much.

usage: python benchmarks/startup_profile.py [--repeats 3] [--no-readme] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyze import CACHE, MODULE_CACHE, README, build_checkpoint  # noqa: E402
from readme_sections import replace_section  # noqa: E402

RESULT = "PROFILE_RESULT "
STAGES = ("interpreter", "imports", "resolve", "plan", "process_state", "read", "kernel", "metrics", "assemble", "write")


def seconds_since_process_start() -> float:
    """From /proc: how long this process has existed (interpreter start-up included)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def profile_worker(folder: Path, out: Path) -> dict:
    times: dict[str, float] = {"interpreter": seconds_since_process_start()}
    mark = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - mark
        mark = now

    import hf_spectral.cli  # noqa: F401
    from hf_spectral import engine, metrics
    from hf_spectral.sources import resolve
    from hf_spectral.store import write_snapshot

    lap("imports")
    (checkpoint,) = resolve(str(folder))
    lap("resolve")
    options = engine.AnalysisOptions(progress=False)
    plan = engine.plan_checkpoint(checkpoint, options)
    lap("plan")
    state = engine.process_state()
    device = engine.resolve_device(options.device, state)
    lap("process_state")
    results = []
    for spec in plan.specs:
        matrix = engine._materialize(spec, plan.readers[spec.name]).to(device)
        assert engine.all_finite(matrix)  # touches every page: the read
        lap("read")
        sigma = metrics.singular_values(matrix)
        lap("kernel")
        results.append(engine._spectrum_result(spec, matrix, sigma, None, options))
        lap("metrics")
    snapshot = engine._assemble(plan, results, [], {"source": str(folder)})
    lap("assemble")
    write_snapshot(snapshot, out)
    lap("write")
    checkpoint.close()
    return times


def run_child(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads (default: all cores)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT + json.dumps(profile_worker(args.worker, args.out)), flush=True)
        return

    CACHE.mkdir(exist_ok=True)
    folder = build_checkpoint()
    for file in folder.glob("*.safetensors"):
        file.read_bytes()  # warm page cache for every method
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_SPECTRAL_CACHE": str(MODULE_CACHE),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    # the calibration is measured once (its cache is what every dry run after the first reads)
    run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--dry-run"], env)
    profiles, cli_walls, predicted, loads = [], [], [], []
    started, load_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            wall, out = run_child([sys.executable, __file__, "--worker", str(folder), "--out", f"{scratch}/p{repeat}"], env)
            profile = json.loads(next(l for l in out.splitlines() if l.startswith(RESULT))[len(RESULT):])
            profile["exit"] = wall - sum(profile.values())  # parent's wall − child's stages: tear-down and spawning
            profiles.append(profile)
            wall, _ = run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--output",
                                 f"{scratch}/c{repeat}", "--no-progress"], env)
            cli_walls.append(wall)
            _, out = run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--dry-run"], env)
            match = re.search(r"decompositions ([\d.]+) s, whole process ([\d.]+) s", out)
            predicted.append((float(match.group(1)), float(match.group(2))))
            print(f"[{repeat + 1}/{args.repeats}] kernel {profile['kernel']:.2f} s, profile total "
                  f"{sum(profile.values()):.2f} s, cli wall {cli_walls[-1]:.2f} s, predicted kernel "
                  f"{predicted[-1][0]:.2f} s / whole {predicted[-1][1]:.2f} s, load {loads[-1]:.2f}", flush=True)
    med = {stage: statistics.median(p[stage] for p in profiles) for stage in (*STAGES, "exit")}
    kernel = med["kernel"]
    cli = statistics.median(cli_walls)
    pred_kernel = statistics.median(p[0] for p in predicted)
    pred_wall = statistics.median(p[1] for p in predicted)
    total = sum(med.values())
    rows = ["| stage | seconds (median) | share of the profile process |", "|---|---|---|"]
    for stage, value in med.items():
        rows.append(f"| {stage} | {value:.3f} | {100 * value / total:.0f}% |")
    rows.append(f"| **total** | **{total:.2f}** | 100% |")
    context = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} "
               f"({len(os.sched_getaffinity(0))} cores shared with other developers' jobs; load average 1 min "
               f"before each round {', '.join(f'{l:.1f}' for l in loads)}; from {load_start[0]:.1f} at the start), "
               f"{args.repeats} interleaved rounds, {args.threads or len(os.sched_getaffinity(0))} threads per process.")
    summary = [
        f"- whole `hf-spectral analyze` process (CLI, wall): **{cli:.2f} s** (runs {', '.join(f'{w:.2f}' for w in cli_walls)})",
        f"- singular-value kernel alone (the profile's `kernel` stage): **{kernel:.2f} s**",
        f"- whole process ÷ kernel: **{cli / kernel:.2f}×** (target ≤ 1.2×: {'met' if cli / kernel <= 1.2 else 'MISSED'})",
        f"- `--dry-run` predicted the decompositions at {pred_kernel:.2f} s (error {100 * (pred_kernel / kernel - 1):+.0f}% "
        f"against the measured kernel) and the whole process at {pred_wall:.2f} s "
        f"(error {100 * (pred_wall / cli - 1):+.0f}% against the CLI's wall)",
    ]
    text = context + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(summary)
    print("\n" + text)
    if not args.no_readme:
        write_section(text, (time.time() - started) / 60)


START, END = "<!-- benchmarks/startup_profile.py: start -->", "<!-- benchmarks/startup_profile.py: end -->"


def write_section(body: str, minutes: float) -> None:
    section = f"""{START}
## `startup_profile.py`: where one analyze process spends its time, and the `--dry-run` prediction

`python benchmarks/startup_profile.py` runs, interleaved in fresh processes on the GPT-2-small-shaped
checkpoint: a profile of the analyze path stage by stage (interpreter start from `/proc`, imports,
resolving, planning, accelerate's process state, reading = mapping + the finiteness pass that touches
every page, the singular-value kernel, metrics, assembling the table, writing the snapshot, and the
parent-measured rest as `exit`), the real CLI (`hf-spectral analyze`, wall time from the parent), and
`--dry-run` (its prediction, from the calibration cached by a first dry run before the rounds).

{body}

Re-run: `python benchmarks/startup_profile.py` (about {minutes:.0f} min here).
{END}"""
    replace_section(README, START, END, section)


if __name__ == "__main__":
    main()

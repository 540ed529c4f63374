"""Where the time of one ``hf-spectral analyze`` process goes on the GPT-2-small-shaped checkpoint
(``benchmarks/analyze.py`` builds it): interpreter start, imports, resolving, planning, reading the
tensors, the singular-value kernel, metrics, assembling the table and writing the snapshot; and the
whole CLI process against the kernel alone (target: ≤ 1.2×).

Each round runs, interleaved, in fresh processes, for each backend (``numpy``: the default on a CPU,
no torch import; ``torch``: ``--backend torch``, what every analysis ran before the numpy backend):
  profile  the analyze path stage by stage (the engine's own functions, one after the other)
  cli      ``python -m hf_spectral analyze FOLDER --output ... --no-progress --backend B`` (wall measured by the parent)
and once per round
  dry_run  ``python -m hf_spectral analyze FOLDER --dry-run`` (its predicted kernel and whole-process seconds)
Medians over rounds; the machine is shared, so only ratios within one run mean much.

usage: python benchmarks/startup_profile.py [--repeats 3] [--no-readme] [--threads N] [--backends numpy torch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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
BACKENDS = ("numpy", "torch")
STAGES = ("interpreter", "imports", "resolve", "plan", "process_state", "read", "kernel", "metrics", "assemble", "write")


def seconds_since_process_start() -> tuple[float, float]:
    """From /proc: how long this process has existed (interpreter start-up included), and the CPU
    seconds it used so far."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    return uptime - int(fields[19]) / ticks, (int(fields[11]) + int(fields[12])) / ticks


def profile_worker(folder: Path, out: Path, backend: str) -> dict:
    wall_so_far, cpu_so_far = seconds_since_process_start()
    times: dict[str, float] = {"interpreter": wall_so_far}
    cpu: dict[str, float] = {"interpreter": cpu_so_far}
    mark, cpu_mark = time.perf_counter(), time.process_time()

    def lap(stage: str) -> None:
        nonlocal mark, cpu_mark
        now, cpu_now = time.perf_counter(), time.process_time()
        times[stage] = times.get(stage, 0.0) + now - mark
        cpu[stage] = cpu.get(stage, 0.0) + cpu_now - cpu_mark
        mark, cpu_mark = now, cpu_now

    import hf_spectral.cli  # noqa: F401
    from hf_spectral import engine, metrics
    from hf_spectral.sources import resolve
    from hf_spectral.store import write_snapshot

    if backend == "torch":  # what the torch backend's CLI imports (torch on first use, accelerate for its state)
        import accelerate  # noqa: F401
        import torch  # noqa: F401
    lap("imports")
    (checkpoint,) = resolve(str(folder))
    lap("resolve")
    options = engine.AnalysisOptions(progress=False, backend=backend)
    plan = engine.plan_checkpoint(checkpoint, options)
    lap("plan")
    state = engine.process_state()
    chosen = engine.compute_backend(plan, options, state)
    assert chosen == backend, (chosen, backend)
    device = engine.NUMPY_DEVICE if chosen == "numpy" else engine.resolve_device(options.device, state)
    lap("process_state")
    results = []
    for spec in plan.specs:
        if chosen == "numpy":
            matrix = engine._materialize(spec, plan.array_readers[spec.name])
        else:
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
    cpu["interpreter"] = min(cpu["interpreter"], times["interpreter"])  # tick-rounded
    return {"wall": times, "cpu": cpu}


def run_child(args: list[str], env: dict) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, every thread) of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--threads", type=int, help="OMP/MKL/OpenBLAS threads (default: all cores)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="numpy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT + json.dumps(profile_worker(args.worker, args.out, args.backend)), flush=True)
        return

    CACHE.mkdir(exist_ok=True)
    folder = build_checkpoint()
    for file in folder.glob("*.safetensors"):
        file.read_bytes()  # warm page cache for every method
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_SPECTRAL_CACHE": str(MODULE_CACHE),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    # the calibration is measured once (its cache is what every dry run after the first reads)
    run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--dry-run"], env)
    profiles: dict[str, list[dict]] = {b: [] for b in args.backends}
    clis: dict[str, list[tuple[float, float]]] = {b: [] for b in args.backends}  # (wall, cpu) per round
    predicted, loads = [], []
    started, load_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            for backend in args.backends:
                wall, cpu, out = run_child([sys.executable, __file__, "--worker", str(folder), "--backend", backend,
                                            "--out", f"{scratch}/p{repeat}{backend}"], env)
                profile = json.loads(next(l for l in out.splitlines() if l.startswith(RESULT))[len(RESULT):])
                # the parent's measure − the child's stages: tear-down (and spawning, for the wall)
                profile["wall"]["exit"] = wall - sum(profile["wall"].values())
                profile["cpu"]["exit"] = max(0.0, cpu - sum(profile["cpu"].values()))
                profiles[backend].append(profile)
                wall, cpu, _ = run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--output",
                                          f"{scratch}/c{repeat}{backend}", "--no-progress", "--backend", backend], env)
                clis[backend].append((wall, cpu))
                print(f"[{repeat + 1}/{args.repeats}] {backend}: kernel {profile['wall']['kernel']:.2f} s "
                      f"(cpu {profile['cpu']['kernel']:.2f} s), profile total {sum(profile['wall'].values()):.2f} s, "
                      f"cli wall {wall:.2f} s (cpu {cpu:.2f} s)", flush=True)
            _, _, out = run_child([sys.executable, "-m", "hf_spectral", "analyze", str(folder), "--dry-run"], env)
            match = re.search(r"decompositions ([\d.]+) s, whole process ([\d.]+) s", out)
            predicted.append((float(match.group(1)), float(match.group(2))))
            print(f"[{repeat + 1}/{args.repeats}] predicted kernel {predicted[-1][0]:.2f} s / whole "
                  f"{predicted[-1][1]:.2f} s, load {loads[-1]:.2f}", flush=True)
    clocks = ("wall", "cpu")
    med = {(b, c): {stage: statistics.median(p[c][stage] for p in profiles[b]) for stage in (*STAGES, "exit")}
           for b in args.backends for c in clocks}
    cli = {(b, c): statistics.median(run[i] for run in clis[b]) for b in args.backends for i, c in enumerate(clocks)}
    first = args.backends[0]
    pred_kernel = statistics.median(p[0] for p in predicted)
    pred_wall = statistics.median(p[1] for p in predicted)
    columns = [(b, c) for b in args.backends for c in clocks]
    rows = ["| stage | " + " | ".join(f"{b}: {c} s" for b, c in columns) + " |", "|---|" + "---|" * len(columns)]
    for stage in (*STAGES, "exit"):
        rows.append(f"| {stage} | " + " | ".join(f"{med[key][stage]:.3f}" for key in columns) + " |")
    rows.append("| outside the kernel | " + " | ".join(
        f"{sum(med[key].values()) - med[key]['kernel']:.3f}" for key in columns) + " |")
    rows.append("| **profile total** | " + " | ".join(f"**{sum(med[key].values()):.2f}**" for key in columns) + " |")
    rows.append("| **CLI process** | " + " | ".join(f"**{cli[key]:.2f}**" for key in columns) + " |")
    threads = args.threads or len(os.sched_getaffinity(0))
    context = (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} "
               f"({len(os.sched_getaffinity(0))} cores shared with other jobs; load average 1 min "
               f"before each round {', '.join(f'{l:.1f}' for l in loads)}; from {load_start[0]:.1f} at the start), "
               f"{args.repeats} interleaved rounds, {threads} thread{'s' if threads != 1 else ''} per process; "
               "medians. `cpu`: user + system seconds of every thread (from `/proc` and `getrusage`), which a "
               "loaded machine inflates far less than the wall.")
    summary = []
    for b in args.backends:
        ratios = {c: cli[(b, c)] / med[(b, c)]["kernel"] for c in clocks}
        summary.append(
            f"- {b} backend: whole `hf-spectral analyze --backend {b}` process **{cli[(b, 'wall')]:.2f} s** wall "
            f"(runs {', '.join(f'{w:.2f}' for w, _ in clis[b])}), {cli[(b, 'cpu')]:.2f} s CPU; ÷ its kernel: "
            f"**{ratios['wall']:.2f}×** wall, **{ratios['cpu']:.2f}×** CPU (target ≤ 1.2×: "
            + ", ".join(f"{'met' if ratios[c] <= 1.2 else 'MISSED'} on the {c}" for c in clocks) + ")")
    if len(args.backends) == 2:
        other = args.backends[1]
        summary.append(f"- {first} ÷ {other}: whole process {cli[(first, 'wall')] / cli[(other, 'wall')]:.2f}× wall, "
                       f"{cli[(first, 'cpu')] / cli[(other, 'cpu')]:.2f}× CPU; kernel "
                       f"{med[(first, 'cpu')]['kernel'] / med[(other, 'cpu')]['kernel']:.2f}× CPU")
    summary.append(
        f"- `--dry-run` predicted the decompositions at {pred_kernel:.2f} s (error "
        f"{100 * (pred_kernel / med[(first, 'wall')]['kernel'] - 1):+.0f}% against the {first} kernel) and the whole "
        f"process at {pred_wall:.2f} s (error {100 * (pred_wall / cli[(first, 'wall')] - 1):+.0f}% against the "
        f"{first} CLI's wall)")
    text = context + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(summary)
    print("\n" + text)
    if not args.no_readme:
        write_section(text, (time.time() - started) / 60)


START, END = "<!-- benchmarks/startup_profile.py: start -->", "<!-- benchmarks/startup_profile.py: end -->"


def write_section(body: str, minutes: float) -> None:
    section = f"""{START}
## `startup_profile.py`: where one analyze process spends its time, and the `--dry-run` prediction

`python benchmarks/startup_profile.py` runs, interleaved in fresh processes on the GPT-2-small-shaped
checkpoint, for the numpy backend (the default on a CPU: no torch import) and the torch backend
(`--backend torch`, what every analysis ran before): a profile of the analyze path stage by stage
(interpreter start from `/proc`, imports, resolving, planning, the process state, reading = mapping + the
finiteness pass that touches every page, the singular-value kernel, metrics, assembling the table,
writing the snapshot, and the parent-measured rest as `exit`), the real CLI (`hf-spectral analyze
--backend B`, wall time from the parent), and `--dry-run` (its prediction, from the calibration cached
by a first dry run before the rounds).

{body}

Re-run: `python benchmarks/startup_profile.py` (about {minutes:.0f} min here).
{END}"""
    replace_section(README, START, END, section)


if __name__ == "__main__":
    main()

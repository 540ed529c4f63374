"""Run by tests/test_distributed.py under ``accelerate launch`` (2 processes): the CLI's analyze, with
each process recording which tasks it computed and how many torch threads it used while doing so.

usage: analyze_two_processes.py SOURCE OUTPUT RECORD_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hf_spectral import engine
from hf_spectral.cli import main

source, output, records = sys.argv[1], sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(3)  # not what the engine will choose: shows it sets, and restores, the count
seen: list[dict] = []
real_decompose, real_align = engine.decompose, engine.align


def decompose(spec, read, options, device, *matrix):  # type: ignore[no-untyped-def]
    seen.append({"task": spec.name, "threads": torch.get_num_threads()})
    return real_decompose(spec, read, options, device, *matrix)


def align(pair, specs, readers, options, device):  # type: ignore[no-untyped-def]
    seen.append({"task": pair.label, "threads": torch.get_num_threads()})
    return real_align(pair, specs, readers, options, device)


engine.decompose, engine.align = decompose, align
code = main(["analyze", source, "--output", output, "--no-progress", "--device", "cpu", "--top-k", "2", "--alignment"])
state = engine.process_state()
record = {"rank": state.process_index, "num_processes": state.num_processes, "code": code, "tasks": seen,
          "threads_after": torch.get_num_threads(), "distributed_type": str(state.distributed_type)}
(records / f"rank{state.process_index}.json").write_text(json.dumps(record))
sys.exit(code)

"""Run by tests/test_faults_writes.py under ``accelerate launch`` (2 processes): the CLI's analyze
while the disk is full (safetensors' write fails on the main process, the only one that writes).

usage: analyze_full_disk.py SOURCE OUTPUT
"""

from __future__ import annotations

import sys

from safetensors import SafetensorError

from hf_spectral import store
from hf_spectral.cli import main


def full(arrays, path):  # type: ignore[no-untyped-def]
    raise SafetensorError("Error while serializing: IoError(No space left on device)")


store.save_file = full
sys.exit(main(["analyze", sys.argv[1], "--output", sys.argv[2], "--no-progress", "--device", "cpu"]))

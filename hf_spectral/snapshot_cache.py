"""The snapshot cache: one analyzed snapshot per (checkpoint weights, analysis options), shared by
every command (``dynamics``, ``report``, ``card`` and ``analyze_series``) whatever their ``--output``.

Layout under :func:`cache_root` (``$HF_SPECTRAL_CACHE``, default ``~/.cache/hf_spectral``, beside
the Hugging Face caches; ``HF_SPECTRAL_CACHE=off`` disables every hf_spectral cache):

    snapshots/<key>/            a snapshot in the store format; key = sha256 of the checkpoint's
                                fingerprint (sha256 of its weight files), the options, the versions
    snapshots/by-file/<k>.json  the key of a checkpoint whose files had this (path, size, mtime, inode):
                                a second call does not hash the weight files again

A checkpoint copied elsewhere, renamed, or reached through another Hub revision with the same files has
the same fingerprint, hence the same snapshot. Entries are written atomically; a damaged one is
computed again. Nothing is ever evicted: delete ``snapshots/`` to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from hf_spectral._version import __version__
from hf_spectral.atomic import atomic_file
from hf_spectral.caches import cache_root
from hf_spectral.sources.types import Checkpoint
from hf_spectral.store import FORMAT_VERSION

SNAPSHOTS_DIR = "snapshots"
_BY_FILE = "by-file"


def snapshot_folder(checkpoint: Checkpoint, options_meta: dict) -> tuple[Path, str] | None:
    """``(folder, key)`` of the cached snapshot of ``checkpoint`` analyzed with ``options_meta``
    (``AnalysisOptions.to_meta()``), or None when caching is off."""
    root = cache_root()
    if root is None:
        return None
    base = root / SNAPSHOTS_DIR
    options = json.dumps(options_meta, sort_keys=True, default=str)
    pointer = base / _BY_FILE / f"{_file_signature(checkpoint, options)}.json"
    try:
        key = str(json.loads(pointer.read_text())["key"])
    except (OSError, ValueError, KeyError, TypeError):
        key = _key(checkpoint, options)
        with contextlib.suppress(OSError):  # an unwritable cache only costs the hashing next time
            pointer.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(pointer) as tmp:
                tmp.write_text(json.dumps({"key": key}))
    return base / key, key


def _key(checkpoint: Checkpoint, options: str) -> str:
    text = json.dumps([FORMAT_VERSION, __version__, checkpoint.fingerprint(), options])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _file_signature(checkpoint: Checkpoint, options: str) -> str:
    digest = hashlib.sha256(options.encode())
    for part in sorted(checkpoint.parts, key=lambda p: p.component):
        for file in sorted(str(f) for f in part.reader.files):
            real = os.path.realpath(file)
            st = os.stat(real)
            digest.update(f"{part.component}|{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
    return digest.hexdigest()[:32]

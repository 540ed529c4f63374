"""A stable hash that identifies a checkpoint by the bytes of its weight files.

Each weight file is identified by the sha256 of its bytes. For a file in the Hub cache that
is free: the snapshot file is a symlink to ``blobs/<sha256>`` (LFS files, i.e. all weight
files; small git files are named by their git sha1 instead, kept as ``git-sha1:...``). Any
other file is streamed once through sha256 (measured ~1.1 GB/s on one core here: 0.08 s for
an 87 MB file, ~15 s for a 16 GB checkpoint, mostly disk-bound when not in the page cache) and
remembered for the process, keyed by path, size, inode and mtime.

Only weight files count: the same weights under another config, index or file name give the
same fingerprint; component names (``unet``, ``vae``...) do count.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # only duck-typed at run time: types.py imports this module
    from hf_spectral.sources.types import Checkpoint

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 16 << 20

_memo: dict[tuple[str, int, int, int], str] = {}
_memo_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes (free for Hub cache blobs), or ``"git-sha1:<hex>"``."""
    path = Path(path)
    blob = _hub_blob_name(path)
    if blob is not None:
        return blob
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_ino, st.st_mtime_ns)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    with _memo_lock:
        _memo[key] = digest
    return digest


def _hub_blob_name(path: Path) -> str | None:
    # A Hub cache snapshot file is a symlink into the repo's blobs/ folder, named by its hash.
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if target.parent.name != "blobs":
        return None
    if _SHA256.match(target.name):
        return f"sha256:{target.name}"
    if _SHA1.match(target.name):
        return f"git-sha1:{target.name}"
    return None


def checkpoint_fingerprint(ckpt: "Checkpoint") -> str:
    """sha256 hex over (component, sorted file digests) of every part, parts sorted by component."""
    entries = sorted(
        (part.component, sorted(file_digest(f) for f in part.reader.files)) for part in ckpt.parts
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def identity_keys(checkpoints: Sequence["Checkpoint"]) -> list[str]:
    """A key per checkpoint, equal exactly when their weight files are identical.

    ``Checkpoint.fingerprint()`` hashes every byte of files outside the Hub cache, which for a long
    run of a large model costs minutes on every call. Identical files have identical sizes and
    sampled blocks, so only checkpoints that agree on those are fingerprinted in full.
    """
    quick = [_sampled_signature(c) for c in checkpoints]
    counts: dict[str, int] = {}
    for signature in quick:
        counts[signature] = counts.get(signature, 0) + 1
    keys = []
    for checkpoint, signature in zip(checkpoints, quick):
        if counts[signature] > 1:
            checkpoint.meta["fingerprint"] = checkpoint.fingerprint()
            keys.append(checkpoint.meta["fingerprint"])
        else:
            keys.append(f"sampled:{signature}")
    return keys


_SAMPLES, _BLOCK = 16, 1 << 16


def _sampled_signature(checkpoint: "Checkpoint") -> str:
    """sha256 over each part's files: size and 16 blocks of 64 KiB spread over the file."""
    digest = hashlib.sha256()
    for part in sorted(checkpoint.parts, key=lambda p: p.component):
        files = []
        for file in part.reader.files:
            size = os.path.getsize(file)
            h = hashlib.sha256(str(size).encode())
            with open(file, "rb") as handle:
                if size <= _SAMPLES * _BLOCK:
                    h.update(handle.read())
                else:
                    for i in range(_SAMPLES):
                        handle.seek(i * (size - _BLOCK) // (_SAMPLES - 1))
                        h.update(handle.read(_BLOCK))
            files.append(h.hexdigest())
        digest.update(json.dumps([part.component, sorted(files)]).encode())
    return digest.hexdigest()

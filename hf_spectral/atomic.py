"""Atomic files and folders, and recovery of what a crashed writer left behind.

Every result hf_spectral writes (snapshots, dynamics tables, reports, figures, model cards, JSON)
goes through :func:`atomic_folder` or :func:`atomic_file`: the content is written into a hidden
temporary sibling ``.NAME.tmp-XXXXXXXX`` that is renamed into place when complete. A folder cannot
be renamed over a non-empty one, so replacing one moves the old folder aside first
(``.NAME.old-XXXXXXXX``), renames the new one in, then deletes the old one.

Crash states and what the next writer of ``NAME`` does (:func:`recover`):

* killed while writing: a ``.NAME.tmp-*`` remains. Its writer held an advisory lock (``flock``) on
  it, which the kernel releases when the process dies; a temporary nobody holds is removed, one
  still held belongs to a live writer and is left alone.
* killed between the two renames: ``NAME`` is gone and only ``.NAME.old-*`` remains: it is put back
  (with a warning), as the complete previous result.
* killed while deleting the old folder: ``NAME`` is complete and the ``.old-*`` is removed.

Writers of one parent folder take turns (a lock on the folder) for the short rename sequence, so two
processes writing the same ``NAME`` both succeed and the last one wins; the long writes into the
temporaries run in parallel. Where ``fcntl`` is missing (Windows) or the folder cannot be locked,
writes are still atomic, but temporaries are never reclaimed while their writer may be alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from hf_spectral.errors import SpectralError

logger = logging.getLogger("hf_spectral")

_DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")


def debris_name(final: Path, kind: str) -> Path:
    """A fresh hidden sibling of ``final`` of ``kind`` ``tmp`` or ``old``."""
    return final.parent / f".{final.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to fill; when the block succeeds it replaces ``final`` (created or
    replaced whole), when it fails it is removed with any parent folder this call created.

    The caller checks that ``final`` may be replaced (it holds a result of the same kind)."""
    final = Path(final)
    created = _missing_parents(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with _locked(final.parent):
            recover(final)
            tmp = debris_name(final, "tmp")
            tmp.mkdir()
            claim = _hold(tmp)
    except BaseException:
        _remove_created(created)
        raise
    old = None
    try:
        yield tmp
        with _locked(final.parent):
            old = _swap_in(tmp, final)
    except BaseException:
        _remove(tmp)
        _remove_created(created)
        raise
    finally:
        _release(claim)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary sibling of ``path`` to write to: renamed over ``path`` when the block
    succeeds, removed when it fails, so ``path`` never holds a half-written file."""
    path = Path(path)
    with _locked(path.parent):
        recover(path)
        tmp = debris_name(path, "tmp")
        tmp.touch()
        claim = _hold(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _release(claim)
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` at ``final``, replacing what is there."""
    with _locked(final.parent):
        old = _swap_in(tmp, final)
    if old is not None:
        _remove(old)


def recover(final: str | os.PathLike) -> None:
    """Clean up after writers of ``final`` that died: remove their unheld temporaries, put back a
    moved-aside old version when ``final`` itself is missing, remove old versions otherwise."""
    final = Path(final)
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return
    olds = []
    for entry in entries:
        match = _DEBRIS.match(entry.name)
        if match is None or match.group("name") != final.name:
            continue
        if match.group("kind") == "old":
            olds.append(entry)
        elif _unheld(entry):
            _remove(entry)
    if not olds:
        return
    olds.sort(key=_mtime)
    if not os.path.lexists(final):
        # killed between the renames of a replace: the old version is the last complete one
        newest = olds.pop()
        os.replace(newest, final)
        logger.warning("hf_spectral: %s was missing after an interrupted write; restored the previous version", final)
    for entry in olds:
        _remove(entry)


def recover_all(folder: str | os.PathLike) -> None:
    """:func:`recover` for every name in ``folder`` that has temporaries or old versions beside it."""
    folder = Path(folder)
    try:
        names = {m.group("name") for m in map(_DEBRIS.match, os.listdir(folder)) if m is not None}
    except OSError:
        return
    with _locked(folder):
        for name in sorted(names):
            recover(folder / name)


def write_error(target: str | os.PathLike, exc: BaseException, fix: str) -> SpectralError:
    """The one-line error for a failed write of ``target`` (disk full, read-only, permissions)."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return SpectralError(f"cannot write {target}: {reason}; {fix}")


def check_writable(path: str | os.PathLike, fix: str, *, what: str = "") -> None:
    """Fail now, before any work, unless ``path`` (a file or folder to create or replace) can be
    written: its nearest existing ancestor must be a folder where a file can be created. ``what``
    starts the message (``"snapshot to "``)."""
    target = Path(path).absolute()
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and existing == target and not target.is_dir():
        existing = target.parent  # a file to replace: its folder must take the new one
    if existing is None or not existing.is_dir():
        raise SpectralError(f"cannot write {what}{path}: {existing} is not a folder; {fix}")
    probe = existing / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()  # os.access says yes to root on a read-only mount's chmod'ed folder: try it
        probe.unlink()
    except OSError as exc:
        raise write_error(f"{what}{path}", exc, fix) from None


# ------------------------------------------------------------------------------------------------


def _swap_in(tmp: Path, final: Path) -> Path | None:
    """Rename ``tmp`` to ``final`` (the caller holds the folder lock); returns the moved-aside old one."""
    old = None
    if os.path.lexists(final):
        old = debris_name(final, "old")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    return old


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` on the folder itself: no lock file to leave behind).
    Inside a temporary folder this process holds, no other writer can be: no lock is needed (and
    taking one would wait forever on our own hold)."""
    fd = _open(folder)
    if fd is None:
        yield
        return
    if _identity(fd) in _held:
        os.close(fd)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock (some network or FUSE mounts): still atomic, unlocked
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


# (device, inode) of the temporaries this process holds -> their locked descriptor
_held: dict[tuple[int, int], int] = {}


def _hold(path: Path) -> int | None:
    """Lock ``path`` for as long as this writer lives (released by ``_release`` or by its death)."""
    fd = _open(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no flock here: the temporary is simply never reclaimed while this writer may live
        os.close(fd)
        return None
    _held[_identity(fd)] = fd
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        _held.pop(_identity(fd), None)
        os.close(fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _unheld(path: Path) -> bool:
    """Whether no live writer holds ``path`` (its lock can be taken); False when locks are unavailable."""
    fd = _open(path)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # BlockingIOError: held by a live writer
        return False
    finally:
        os.close(fd)


def _open(path: Path) -> int | None:
    if fcntl is None:
        return None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _missing_parents(final: Path) -> list[Path]:
    """The ancestors of ``final`` that do not exist yet, deepest first."""
    missing = []
    for parent in final.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # deepest first; only folders this call made, and only if still empty
        with contextlib.suppress(OSError):
            folder.rmdir()

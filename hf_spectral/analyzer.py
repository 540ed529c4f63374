"""``analyze`` and ``analyze_series``: a SOURCE string in, snapshots out (written when asked)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from hf_spectral.engine import AnalysisOptions, Plan, checkpoint_meta, plan_checkpoint, process_state, run_plan
from hf_spectral.errors import SpectralError
from hf_spectral.sources import resolve
from hf_spectral.sources.types import Checkpoint
from hf_spectral.store import META_FILE, Snapshot, check_output, is_snapshot, read_snapshot, write_snapshot

logger = logging.getLogger("hf_spectral")


def analyze(
    source: str | os.PathLike,
    revision: str | None = None,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    top_k: int = 0,
    device: str = "auto",
    precision: str = "float32",
    alignment: bool = False,
    variant: str | None = None,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    heavy_tail: bool = False,
    view: str = "paper",
    batch: str = "auto",
    backend: str = "auto",
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Snapshot:
    """Spectra of every weight matrix of one checkpoint: a local file or folder, a diffusers
    pipeline, or a Hub model id at ``revision``. Writes the snapshot to ``output`` when given.
    ``heavy_tail`` adds weightwatcher's α metrics; ``view="ww"`` forms conv ESDs as weightwatcher does.
    ``backend``: ``auto`` (numpy's LAPACK where it can, torch elsewhere: ``engine.compute_backend``), ``numpy``, ``torch``.
    ``token`` and ``cache_dir`` are those of ``from_pretrained`` (Hub ids only).

    For a Trainer run (several ``checkpoint-*`` folders) use ``analyze_series``.
    """
    options = AnalysisOptions(include, exclude, top_k, device, precision, alignment, progress=progress,
                              heavy_tail=heavy_tail, view=view, batch=batch, backend=backend)
    checkpoints = resolve(str(source), revision=revision, variant=variant, cache_dir=cache_dir, token=token)
    return analyze_resolved(checkpoints, options, source=str(source), output=output)


def analyze_series(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    variant: str | None = None,
    **options: Any,
) -> list[Snapshot]:
    """Snapshots of every checkpoint of a Trainer run (or of an explicit list of checkpoints), in
    time order. With ``cache_dir`` each snapshot is stored there and reused when the checkpoint's
    files and the options are unchanged, so a second call recomputes nothing.
    """
    analysis = AnalysisOptions(**options)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    checkpoints: list[Checkpoint] = []
    try:
        for item in sources:
            checkpoints += resolve(str(item), revision=revision, variant=variant)
    except BaseException:
        _close(checkpoints)
        raise
    return analyze_resolved_series(checkpoints, analysis, cache_dir=cache_dir)


def analyze_resolved(
    checkpoints: list[Checkpoint], options: AnalysisOptions, *, source: str, output: str | os.PathLike | None = None
) -> Snapshot:
    """``analyze`` for a SOURCE already resolved (to exactly one checkpoint); closes the checkpoints."""
    try:
        if len(checkpoints) != 1:
            labels = ", ".join(c.label for c in checkpoints[:4])
            raise SpectralError(
                f"{source} holds {len(checkpoints)} checkpoints ({labels}, ...); analyze one of them "
                f"(e.g. {checkpoints[-1].path}) or use analyze_series / `hf-spectral dynamics`"
            )
        if output is not None:
            check_output(Path(output))  # before the SVDs, not after them
        (checkpoint,) = checkpoints
        snapshot = run_plan(plan_checkpoint(checkpoint, options), options, checkpoint_meta(checkpoint))
    finally:
        _close(checkpoints)
    if output is not None:
        _write_on_main(snapshot, Path(output))
    return snapshot


def analyze_resolved_series(
    checkpoints: list[Checkpoint], options: AnalysisOptions, *, cache_dir: str | os.PathLike | None = None
) -> list[Snapshot]:
    """``analyze_series`` for checkpoints already resolved; closes them. Without ``cache_dir``,
    snapshots are kept in the cache every command shares (``hf_spectral.snapshot_cache``).

    Every checkpoint not found in the cache is planned (headers only) before any is computed, so bad
    input (a filter that selects nothing, a broken file) fails before anything is written.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    try:
        if cache is not None:
            check_output(cache, folder_of_snapshots=True)
            folders: list[Path | None] = list(cache_folders(checkpoints, cache))
            keys = [cache_key(c, options) for c in checkpoints]
        else:
            folders, keys = _shared_cache(checkpoints, options)
        cached = [_cached(folder, key) for folder, key in zip(folders, keys)]
        plans: list[Plan | None] = []
        for checkpoint, hit in zip(checkpoints, cached):
            plans.append(None if hit else plan_checkpoint(checkpoint, options))
            checkpoint.close()  # no file stays mapped while the others are planned; readers reopen on use
        todo = [i for i, hit in enumerate(cached) if not hit]
        processes = process_state().num_processes
        if cache is not None and processes > 1 and len(todo) >= processes:
            _run_dealt_by_checkpoint(todo, checkpoints, plans, folders, keys, options)
            return [read_snapshot(folder) for folder in folders]
        snapshots = []
        for checkpoint, folder, key, hit, plan in zip(checkpoints, folders, keys, cached, plans):
            if hit:
                snapshot = read_snapshot(folder)
                snapshot.meta.update(checkpoint_meta(checkpoint))  # the same weights may lie elsewhere now
                snapshots.append(snapshot)
                continue
            assert plan is not None
            snapshot = run_plan(plan, options, {**checkpoint_meta(checkpoint), "cache_key": key})
            checkpoint.close()  # release each checkpoint's mappings as soon as it is done
            if folder is not None:
                _write_on_main(snapshot, folder, required=cache is not None)
            snapshots.append(snapshot)
    finally:
        _close(checkpoints)
    return snapshots


def _shared_cache(checkpoints: Sequence[Checkpoint], options: AnalysisOptions) -> tuple[list[Path | None], list[str]]:
    """Folders and keys in the snapshot cache shared by every command (none when it is off)."""
    from hf_spectral.snapshot_cache import snapshot_folder

    folders: list[Path | None] = []
    keys: list[str] = []
    for checkpoint in checkpoints:
        found = snapshot_folder(checkpoint, options.to_meta())
        folders.append(None if found is None else found[0])
        keys.append("" if found is None else found[1])
    return folders, keys
def _run_dealt_by_checkpoint(todo: list[int], checkpoints: list[Checkpoint], plans: list[Plan | None],
                             folders: list[Path], keys: list[str], options: AnalysisOptions) -> None:
    """A sweep under ``accelerate launch``: whole checkpoints dealt over the processes by cost, each
    decomposed by one process alone and written to its cache folder, with no collective call per
    checkpoint. A failure is raised in every process after all have finished."""
    from accelerate.utils import gather_object

    from hf_spectral.engine import deal_by_cost

    state = process_state()
    costs = [plans[i].total_cost for i in todo]  # type: ignore[union-attr]
    mine = [todo[j] for j in deal_by_cost(costs, state.num_processes)[state.process_index]]
    failures: list[str] = []
    for i in mine:
        try:
            meta = {**checkpoint_meta(checkpoints[i]), "cache_key": keys[i], "dealt_to_process": state.process_index}
            snapshot = run_plan(plans[i], options, meta, alone=True)  # type: ignore[arg-type]
            write_snapshot(snapshot, folders[i])
        except SpectralError as exc:
            failures.append(str(exc))
            break
        finally:
            checkpoints[i].close()
    failures = gather_object(failures)
    if failures:
        raise SpectralError(failures[0])


def _cached(folder: Path | None, key: str) -> bool:
    if folder is None or not is_snapshot(folder):
        return False
    try:
        return json.loads((folder / META_FILE).read_text()).get("cache_key") == key
    except (OSError, ValueError):
        return False  # damaged: computed again and replaced


def cache_folders(checkpoints: Sequence[Checkpoint], cache_dir: Path) -> list[Path]:
    """One folder per checkpoint under ``cache_dir``, named by its label; labels that repeat (an
    explicit list such as ``a/checkpoint-500 b/checkpoint-500``) get their parent folder's name (a
    Hub id's name) in front, then a counter, so that no two checkpoints share a folder."""
    names = [_slug(c.label) for c in checkpoints]
    repeated = {n for n, count in Counter(names).items() if count > 1}
    names = [_slug(_long_label(c)) if n in repeated else n for c, n in zip(checkpoints, names)]
    seen: Counter[str] = Counter()
    total = Counter(names)
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(f"{name}-{seen[name]}" if total[name] > 1 else name)
    return [cache_dir / name for name in unique]


def _long_label(checkpoint: Checkpoint) -> str:
    if checkpoint.commit is not None or checkpoint.revision is not None:  # a Hub id: its name says it
        return f"{checkpoint.source.split('@')[0]}@{checkpoint.label}"
    return f"{checkpoint.path.parent.name}_{checkpoint.label}"  # run/checkpoint-N


def cache_key(checkpoint: Checkpoint, options: AnalysisOptions) -> str:
    """Changes when a weight file of the checkpoint or an analysis option changes (file size and
    modification time stand in for content: hashing every weight file on every call would cost more
    than many analyses)."""
    digest = hashlib.sha256(json.dumps(options.to_meta(), sort_keys=True, default=str).encode())
    for part in checkpoint.parts:
        for file in sorted(part.reader.files):
            stat = Path(file).stat()
            digest.update(f"{part.component}|{Path(file).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _write_on_main(snapshot: Snapshot, folder: Path, *, required: bool = True) -> None:
    """Write on the main process; a failure is raised on every process after the barrier, or, when
    not ``required`` (the shared cache), only warned about."""
    state = process_state()
    failed: SpectralError | None = None
    if state.is_main_process:
        try:
            write_snapshot(snapshot, folder)
        except SpectralError as exc:
            failed = exc  # raised after the barrier: the other processes must not wait forever
    if state.num_processes > 1:  # every process learns of the failure (and fails alike, not on a closed gloo link)
        from accelerate.utils import broadcast_object_list

        box = [None if failed is None else str(failed)]
        broadcast_object_list(box, from_process=0)
        failed = None if box[0] is None else SpectralError(box[0])
    if failed is not None:
        if required:
            raise failed
        logger.warning("hf_spectral: snapshot not cached (%s)", failed)


def _close(checkpoints: Sequence[Checkpoint]) -> None:
    for checkpoint in checkpoints:
        checkpoint.close()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "snapshot"


def default_output(source: str, root: str | os.PathLike = "spectral") -> Path:
    """Where the CLI writes when no ``--output`` is given: ``spectral/<name>``, the source's folder
    name or a file's name without its extension (``model.safetensors`` -> ``model``), never a folder
    that already holds the spectra of another source: then its parent's name goes in front
    (``spectral/b_model`` for ``b/model`` beside ``a/model``), then a counter."""
    path = Path(str(source).rstrip("/"))
    name = path.stem if path.suffix and not path.is_dir() else path.name
    candidates = [_slug(name or str(source))]
    if path.parent.name:
        candidates.append(_slug(f"{path.parent.name}_{candidates[0]}"))
    base = Path(root)
    for candidate in candidates:
        if _free_for(base / candidate, str(source)):
            return base / candidate
    count = 2
    while not _free_for(base / f"{candidates[-1]}-{count}", str(source)):
        count += 1
    return base / f"{candidates[-1]}-{count}"


def _free_for(folder: Path, source: str) -> bool:
    """Whether ``folder`` holds no snapshot, or only snapshots of ``source`` (then it is reused)."""
    if not folder.exists():
        return True
    owners = set()
    for meta in [folder / META_FILE, *folder.glob(f"*/{META_FILE}"), *folder.glob(f"*/*/{META_FILE}")]:
        try:
            owners.add(_source_identity(str(json.loads(meta.read_text()).get("source"))))
        except (OSError, ValueError, AttributeError):
            owners.add(None)  # unreadable: someone's, not provably this source's
        if len(owners) > 1:
            break
    return not owners or owners == {_source_identity(source)}


def _source_identity(source: str) -> str:
    """A local path as its absolute path (``./a/model`` = ``a/model``), anything else as written."""
    path = Path(source.rstrip("/")).expanduser()
    return str(path.resolve()) if path.exists() else source

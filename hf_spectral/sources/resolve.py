"""A SOURCE -> its checkpoints, opened lazily: what ``classify`` decided, then the local or Hub reader.

``resolve(source)`` is ``open_source(classify(source))``; callers that need to know what the SOURCE
is (one checkpoint or a series, a record to read as it is) classify it first and open it after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hf_spectral.errors import SpectralError
from hf_spectral.sources.classify import ClassifiedSource, SourceKind, classify
from hf_spectral.sources.layout import snapshot_not_weights
from hf_spectral.sources.local import open_checkpoint
from hf_spectral.sources.types import Checkpoint


def resolve(
    source: str | Path,
    *,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> list[Checkpoint]:
    """The checkpoints a SOURCE names, ordered in time for a training run.

    revision, cache_dir and token apply to Hub ids only, as in ``from_pretrained`` (cache_dir
    defaults to ``HF_HUB_CACHE`` / ``HF_HOME/hub`` as huggingface_hub resolves it; token to the
    saved login); variant selects ``fp16``-style weight files.
    """
    return open_source(classify(source, revision=revision), variant=variant, cache_dir=cache_dir, token=token)


def open_source(found: ClassifiedSource, *, variant: str | None = None,
                cache_dir: str | Path | None = None, token: str | bool | None = None) -> list[Checkpoint]:
    """The checkpoints of a classified SOURCE (Hub ids fetched into ``cache_dir`` unless offline).

    Snapshots and records hold spectra, not weights: they are refused (read them with ``read_snapshot``
    or the series loader). Hub revisions are opened one by one; the first that fails raises.
    """
    if found.kind in (SourceKind.SNAPSHOT, SourceKind.RECORD):
        assert found.path is not None
        raise SpectralError(snapshot_not_weights(found.path))
    if found.kind is SourceKind.TRAINER_RUN:
        return _open_all([lambda p=p: [open_checkpoint(p, variant=variant, source=found.source, label=p.name)]
                          for p in found.folders])
    if found.kind is SourceKind.CHECKPOINTS:
        return _open_all([lambda item=item: open_source(item, variant=variant, cache_dir=cache_dir, token=token)
                          for item in found.items])
    if not found.is_hub:  # local: huggingface_hub is not imported (~0.3 s of start-up)
        assert found.path is not None
        return [open_checkpoint(found.path, variant=variant, source=found.source)]
    from hf_spectral.sources.hub import expand_revisions, resolve_hub

    if found.kind is SourceKind.HUB_REVISIONS:
        assert found.repo_id is not None and found.revisions is not None
        names = expand_revisions(found.repo_id, found.revisions, hub_cache_dir=cache_dir, token=token)
        return _open_all([lambda name=name: resolve_hub(found.repo_id, revision=name, variant=variant,
                                                        cache_dir=cache_dir, token=token) for name in names])
    return resolve_hub(found.source, revision=found.revision, variant=variant, cache_dir=cache_dir, token=token)


def _open_all(openers: list[Callable[[], list[Checkpoint]]]) -> list[Checkpoint]:
    """Every opener's checkpoints, in order; those already open are closed when one fails."""
    opened: list[Checkpoint] = []
    try:
        for opener in openers:
            opened += opener()
    except BaseException:
        for checkpoint in opened:
            checkpoint.close()
        raise
    return opened

"""Hub model ids -> a snapshot folder in the local Hub cache -> a checkpoint.

Only the files needed are fetched, in stages, each a ``snapshot_download`` call with narrow
``allow_patterns`` (never TensorFlow/Flax/ONNX/GGUF files, nor single-file checkpoints such as
``sd_xl_base_1.0.safetensors`` that sit beside the diffusers folders):

1. root ``config.json`` / ``model_index.json`` and the root weights of the requested variant
   (``model*.safetensors``, ``diffusion_pytorch_model*.safetensors`` and their index);
2. for a diffusers pipeline: each component's ``config.json`` and weights of that variant;
3. only for models still without weights: legacy ``.bin`` of that variant, then (variant None)
   any safetensors variant, then any ``.bin`` variant; (a named variant, pipeline components)
   the plain files, as diffusers falls back to them.

Offline (``HF_HUB_OFFLINE``, read by huggingface_hub at import time, or set in the environment
when ``resolve`` is called), the cached snapshot of the revision is used as it is.
The cache folder is ``cache_dir``, else ``HF_HUB_CACHE`` / ``HUGGINGFACE_HUB_CACHE`` /
``HF_HOME/hub`` read when called (huggingface_hub's own order).
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Sequence

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from hf_spectral.errors import SpectralError
from hf_spectral.sources.layout import (
    BIN_STEMS,
    SAFE_STEMS,
    NoWeightsError,
    expects_weights,
    pipeline_components,
    weight_sets,
)
from hf_spectral.sources.local import open_checkpoint
from hf_spectral.sources.types import Checkpoint
from hf_spectral.utils.logging import get_logger
from hf_spectral.views.naming import natural_key

ANY = "*"  # stage marker: every variant
_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".h5", ".msgpack", ".gguf", ".onnx")
_TRUE = {"1", "ON", "YES", "TRUE"}
_GLOB = re.compile(r"[*?\[]")
# Pythia-style revision names carry the step: "step1000", "step-1000", "checkpoint_500".
_STEP_IN_NAME = re.compile(r"(?:^|[-_/])(?:step|checkpoint|ckpt)[-_]?(\d+)$", re.IGNORECASE)

logger = get_logger(__name__)


def hub_cache_dir() -> Path:
    """The Hub cache folder, from the environment as it is now (huggingface_hub reads it at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path(constants.HF_HUB_CACHE)


_default_hub_cache = hub_cache_dir  # for functions whose ``hub_cache_dir`` argument shadows the name


def is_offline() -> bool:
    """Whether Hub access is off: huggingface_hub's import-time flag, or the environment now."""
    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return bool(constants.HF_HUB_OFFLINE) or env in _TRUE


def split_revision(source: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> ``(source, None)``."""
    if "@" in source:
        repo_id, _, rev = source.partition("@")
        return repo_id, rev or None
    return source, None


def looks_like_hub_id(source: str) -> bool:
    """Whether a SOURCE that is not a local path could be a Hub model id."""
    repo_id, _ = split_revision(source)
    if not repo_id or repo_id[0] in "./~\\" or repo_id.count("/") > 1 or repo_id.lower().endswith(_FILE_SUFFIXES):
        return False
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def resolve_hub(
    source: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> list[Checkpoint]:
    """The checkpoint of a Hub model id at a revision (default ``main``), from the local cache,
    downloading the weight files first unless offline (``token`` as in ``from_pretrained``)."""
    repo_id, at_rev = split_revision(source)
    if at_rev is not None and revision is not None and at_rev != revision:
        raise SpectralError(f"{source} names revision {at_rev} but --revision is {revision}: give one of them")
    rev = check_revision(repo_id, revision or at_rev or "main")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    offline = is_offline()
    folder = _fetch(repo_id, rev, variant, cache, offline, source, token)
    if offline:  # offline, the ref file read from the cache names the commit folder: it must be one of the repo's
        _inside_cache(folder, cache, repo_id, rev)
    try:
        ckpt = open_checkpoint(folder, variant=variant, source=source, label=rev, revision=rev, commit=folder.name)
    except NoWeightsError as e:
        if offline:
            raise SpectralError(
                f"the cached snapshot of Hub model {repo_id} (revision {rev}) at {folder} lacks weights: "
                f"run `{_download_command(repo_id, rev)}` or unset HF_HUB_OFFLINE ({e})"
            ) from e
        raise SpectralError(f"Hub model {repo_id} (revision {rev}) has no weights hf_spectral can read: {e}") from e
    ckpt.meta["repo_id"] = repo_id
    return [ckpt]


def check_revision(repo_id: str, revision: str) -> str:
    """``revision`` when it can name a branch, tag or commit; a path-like name (``..``, absolute,
    empty parts), which would read refs outside the Hub cache, is a one-line ``SpectralError``."""
    parts = revision.replace("\\", "/").split("/")
    if revision.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts) or ":" in revision:
        raise SpectralError(f"{revision!r} is not a revision name of {repo_id} (it reads like a path): pass a branch, "
                            "tag or commit such as main, v1.0 or step1000")
    return revision


def _inside_cache(folder: Path, cache: Path, repo_id: str, rev: str) -> Path:
    # A planted ref file can hold a path instead of a commit hash.
    snapshots = Path(os.path.realpath(cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"))
    if Path(os.path.realpath(folder)).parent != snapshots:
        raise SpectralError(f"revision {rev} of Hub model {repo_id} resolves to {folder}, outside {snapshots}: "
                            f"the cache is damaged; delete {snapshots.parent} and download the model again")
    return folder


def weight_patterns(fmt: str, variant: str | None, prefixes: list[str]) -> list[str]:
    """``allow_patterns`` for the weight files of one format and variant (None = plain, ``ANY``)
    in each of ``prefixes`` (``""`` = the repo root, else a pipeline component folder).

    huggingface_hub matches with ``fnmatch``, where ``*`` also crosses ``/``: every pattern
    starts with a literal folder or file name so it cannot reach into other folders.
    """
    stems = SAFE_STEMS if fmt == "safetensors" else BIN_STEMS
    out: list[str] = []
    for prefix in prefixes:
        pre = f"{prefix}/" if prefix else ""
        for s in stems:
            if variant == ANY:
                out += [f"{pre}{s}*.{fmt}", f"{pre}{s}.{fmt}.index*.json", f"{pre}{s}.{fmt}.*.index.json"]
            elif variant is None:
                out += [f"{pre}{s}.{fmt}", f"{pre}{s}-*-of-*.{fmt}", f"{pre}{s}.{fmt}.index.json"]
            else:
                out += [
                    f"{pre}{s}.{variant}.{fmt}",
                    f"{pre}{s}.{variant}-*-of-*.{fmt}",
                    f"{pre}{s}-*-of-*.{variant}.{fmt}",
                    f"{pre}{s}.{fmt}.index.{variant}.json",
                    f"{pre}{s}.{fmt}.{variant}.index.json",
                ]
    return out


def fetch_stages(variant: str | None, pipeline: bool) -> list[tuple[str, str | None]]:
    """(format, variant) to try in order for a model folder still without weights."""
    if variant is None:
        return [("safetensors", None), ("bin", None), ("safetensors", ANY), ("bin", ANY)]
    stages: list[tuple[str, str | None]] = [("safetensors", variant), ("bin", variant)]
    if pipeline:  # a component without the variant uses its plain files (diffusers does the same)
        stages += [("safetensors", None), ("bin", None)]
    return stages


def _fetch(repo_id: str, rev: str, variant: str | None, cache: Path, offline: bool, source: str,
           token: str | bool | None = None) -> Path:
    stages = fetch_stages(variant, pipeline=False)

    def download(patterns: list[str]) -> Path:
        return _download(repo_id, rev, cache, patterns, offline, source, token)

    folder = download(["config.json", "model_index.json"] + weight_patterns(*stages[0], [""]))
    if offline:
        return folder  # everything cached is already there; nothing more can be fetched
    prefixes = [""]
    if (folder / "model_index.json").is_file():
        components = pipeline_components(folder)
        stages = fetch_stages(variant, pipeline=True)
        download([f"{c}/config.json" for c in components] + weight_patterns(*stages[0], components))
        prefixes = [c for c in components if expects_weights(folder / c)]
    for fmt, var in stages[1:]:
        lacking = [p for p in prefixes if not weight_sets(folder / p)]
        if not lacking:
            break
        download(weight_patterns(fmt, var, lacking))
    return folder


def _download(repo_id: str, rev: str, cache: Path, patterns: list[str], offline: bool, source: str,
              token: str | bool | None = None) -> Path:
    try:
        return Path(
            snapshot_download(
                repo_id, revision=rev, cache_dir=cache, allow_patterns=patterns, local_files_only=offline,
                token=token,
            )
        )
    except IncompleteSnapshotError as e:
        # Offline, the cached tree listing says some matching files are absent (e.g. only one
        # variant was downloaded); what is there may be enough, which open_checkpoint decides.
        return Path(e.snapshot_path)
    except GatedRepoError as e:
        raise gated_error(repo_id) from e
    except RepositoryNotFoundError as e:
        raise SpectralError(
            f"no such file or folder: {source} (nor a Hub model {repo_id}, or it is private: `hf auth login`)"
        ) from e
    except RevisionNotFoundError as e:
        raise SpectralError(f"Hub model {repo_id} has no revision {rev}: pass an existing branch, tag or commit") from e
    except LocalEntryNotFoundError as e:
        raise SpectralError(_not_cached_message(repo_id, rev, cache, offline, source)) from e
    except HfHubHTTPError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpectralError(f"the Hub refused {repo_id} (revision {rev}): {first}") from e


def gated_error(repo_id: str) -> SpectralError:
    """The error for a gated Hub model the user has not been granted."""
    return SpectralError(
        f"Hub model {repo_id} is gated: accept its terms on huggingface.co and log in with `hf auth login`"
    )


def _not_cached_message(repo_id: str, rev: str, cache: Path, offline: bool, source: str) -> str:
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    cached = sorted(p.name for p in (repo_dir / "refs").glob("*") if p.is_file()) if repo_dir.is_dir() else []
    what = (
        f"revision {rev} of Hub model {repo_id} is not in the cache {cache} (cached: {', '.join(cached)})"
        if cached
        else f"no such file or folder: {source}, and Hub model {repo_id} (revision {rev}) is not in the cache {cache}"
    )
    if offline:
        return f"{what}: run `{_download_command(repo_id, rev)}` or unset HF_HUB_OFFLINE"
    return f"{what}, and the Hub cannot be reached: check the connection, then run `{_download_command(repo_id, rev)}`"


def _download_command(repo_id: str, rev: str) -> str:
    # huggingface_hub 1.x/2.x ships the `hf` CLI (the old `huggingface-cli` is gone). Configs and
    # safetensors weights are all an analysis reads: not the whole repo (ONNX, TF, flax copies...).
    return f'hf download {repo_id} --revision {rev} --include "*.json" "*.safetensors"'



# --------------------------------------------------------------------------------------------------
# Revisions (refs) of a Hub repo


def expand_revisions(repo_id: str, revisions: str | Sequence[str], *,
                     hub_cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> list[str]:
    """Revision names: a comma-separated string or a list; globs (``step*``) are matched against
    the repo's branches and tags (online) or the refs cached locally (offline). Order: as given,
    each glob's matches in natural order (``step2`` before ``step10``)."""
    items = revisions.split(",") if isinstance(revisions, str) else [str(r) for r in revisions]
    requested = [r.strip() for r in items if r.strip()]
    if not requested:
        raise SpectralError(
            f"--revisions for {repo_id} is empty: pass names such as step1000,step2000 or a glob 'step*'")
    available: list[str] | None = None
    names: list[str] = []
    for pattern in requested:
        if not _GLOB.search(pattern):
            names.append(pattern)
            continue
        if available is None:
            available = list_revisions(repo_id, hub_cache_dir=hub_cache_dir, token=token)
        matched = sorted((r for r in available if fnmatch.fnmatchcase(r, pattern)), key=natural_key)
        if not matched:
            shown = ", ".join(sorted(available, key=natural_key)[:8]) or "none"
            raise SpectralError(f"no revision of {repo_id} matches {pattern!r} (refs: {shown}); fix the pattern")
        names += matched
    return list(dict.fromkeys(names))


def list_revisions(repo_id: str, *, hub_cache_dir: str | os.PathLike | None = None,
                   token: str | bool | None = None) -> list[str]:
    """Branch and tag names of a Hub repo: asked of the Hub online, read from the local cache offline
    (or when the Hub cannot be reached)."""
    if not is_offline():
        from huggingface_hub import list_repo_refs
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            refs = list_repo_refs(repo_id, token=token)
            return [ref.name for ref in [*refs.branches, *refs.tags]]
        except GatedRepoError as exc:
            raise gated_error(repo_id) from exc
        except RepositoryNotFoundError as exc:
            raise SpectralError(f"no Hub model {repo_id} (or it is private: `hf auth login`)") from exc
        except Exception as exc:  # network failures come as several exception types; the cache may still do
            logger.warning(f"hf_spectral: cannot list the revisions of {repo_id} on the Hub ({type(exc).__name__}); "
                           "using the refs cached locally")
    return cached_revisions(repo_id, hub_cache_dir=hub_cache_dir)


def cached_revisions(repo_id: str, *, hub_cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Branch and tag names cached under ``models--org--name/refs/`` of the Hub cache."""
    cache = Path(hub_cache_dir).expanduser() if hub_cache_dir is not None else _default_hub_cache()
    refs = cache / f"models--{repo_id.replace('/', '--')}" / "refs"
    if not refs.is_dir():
        raise SpectralError(
            f"no revision of Hub model {repo_id} is in the cache {cache}, so its revisions cannot be listed: "
            f"unset HF_HUB_OFFLINE (and check the connection), or run `{_download_command(repo_id, 'REV')}` "
            "for each revision"
        )
    # Ref names may hold slashes ("refs/pr/1" is stored as refs/refs/pr/1): a file per ref, nested.
    return sorted((p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()), key=natural_key)


def step_from_name(name: str) -> int | None:
    """The step a revision or folder name carries (``step1000`` → 1000), else None."""
    match = _STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None

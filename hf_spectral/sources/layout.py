"""Which files of one model folder hold its weights: standard names, shards, indexes, variants.

Names follow transformers 5 / diffusers 0.42 (``_add_variant`` in both libraries):

- ``model.safetensors`` / ``diffusion_pytorch_model.safetensors`` (+ ``pytorch_model.bin`` legacy);
- variant ``v``: ``model.v.safetensors``; shards ``model.v-00001-of-00002.safetensors`` (diffusers'
  legacy ``model-00001-of-00002.v.safetensors`` too);
- index: ``model.safetensors.index.json``, variant ``model.safetensors.index.v.json`` (diffusers'
  legacy ``model.safetensors.v.index.json`` too).

This module only looks at names and small JSON files; it never reads tensors.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from hf_spectral.errors import SpectralError
from hf_spectral.store import is_snapshot, iter_snapshots

SAFE_STEMS = ("model", "diffusion_pytorch_model")
BIN_STEMS = ("pytorch_model", "diffusion_pytorch_model")
FORMATS = ("safetensors", "bin")  # preference order within one variant

_STEM = {"safetensors": "|".join(SAFE_STEMS), "bin": "|".join(BIN_STEMS)}
_V = r"[A-Za-z0-9_]+"  # a variant name: no dots or dashes, so it cannot be confused with a shard suffix

# Formats we recognise only to say they are unsupported.
_UNSUPPORTED = {
    ".h5": "TensorFlow",
    ".msgpack": "Flax",
    ".gguf": "GGUF",
    ".onnx": "ONNX",
    ".ot": "Rust",
}

EXPECTED = (
    "model.safetensors, model.safetensors.index.json, diffusion_pytorch_model.safetensors (or their "
    "shards/variants), pytorch_model.bin, a diffusers model_index.json or Trainer checkpoint-N/ folders"
)


@dataclass(frozen=True)
class WeightSet:
    """The weight files of one model in one format and variant.

    files:   the weight files (one, or the shards); empty until ``complete()`` for an index.
    index:   the ``*.index*.json`` naming the shards, if any.
    problem: why the set is unusable (shards missing and no index), raised only if it is chosen.
    """

    format: str
    variant: str | None
    files: tuple[Path, ...]
    index: Path | None = None
    problem: str | None = None

    def complete(self) -> "WeightSet":
        """This set with its shard list read from the index; missing shards are a ``SpectralError``."""
        if self.problem is not None:
            raise SpectralError(self.problem)
        if self.index is not None and not self.files:
            return replace(self, files=tuple(index_shards(self.index)))
        return self


def _patterns(fmt: str) -> list[tuple[str, re.Pattern[str]]]:
    stem, ext = _STEM[fmt], re.escape(fmt)
    return [
        ("single", re.compile(rf"^(?:{stem})(?:\.(?P<v>{_V}))?\.{ext}$")),
        ("shard", re.compile(rf"^(?:{stem})(?:\.(?P<v>{_V}))?-(?P<i>\d+)-of-(?P<n>\d+)\.{ext}$")),
        ("shard", re.compile(rf"^(?:{stem})-(?P<i>\d+)-of-(?P<n>\d+)\.(?P<v>{_V})\.{ext}$")),
        ("index", re.compile(rf"^(?:{stem})\.{ext}\.index(?:\.(?P<v>{_V}))?\.json$")),
        ("index", re.compile(rf"^(?:{stem})\.{ext}\.(?P<v>{_V})\.index\.json$")),
    ]


_PATTERNS = [(fmt, kind, pattern) for fmt in FORMATS for kind, pattern in _patterns(fmt)]


def classify(name: str) -> tuple[str, str, re.Match[str]] | None:
    """``(format, kind, match)`` for a standard weight/index file name, else None."""
    for fmt, kind, pattern in _PATTERNS:
        m = pattern.match(name)
        if m is not None:
            return fmt, kind, m
    return None


def read_json(path: Path) -> Any:
    """Parse a JSON file; a bad one is a one-line ``SpectralError`` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpectralError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix or re-download it") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SpectralError(f"cannot read {path} ({e}): check the file or re-download it") from e


def read_config(folder: Path) -> dict[str, Any] | None:
    """The parsed ``config.json`` of a model folder, or None when there is none."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict):
        raise SpectralError(f"{path} is not a JSON object: fix or re-download it")
    return config


def index_weight_map(index: Path) -> dict[str, str]:
    """``tensor name -> shard file name`` from an index file."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SpectralError(f"{index} has no 'weight_map': re-download or re-save the model")
    return {str(k): str(v) for k, v in weight_map.items()}


def index_shards(index: Path) -> list[Path]:
    """The shard files an index names, in first-mention order; a missing shard, or one outside the
    index's folder, is a ``SpectralError``."""
    index = Path(index)
    shards = list(dict.fromkeys(index_weight_map(index).values()))
    paths = [inside(index.parent, s, f"{index} names shard") for s in shards]
    for s, path in zip(shards, paths):
        if not path.is_file():
            raise SpectralError(f"{index} names shard {s}, which is missing from {index.parent}: re-download the model")
    return paths


def inside(folder: Path, name: str, named_by: str) -> Path:
    """``folder / name`` for a ``name`` read from a file's contents (a shard, a pipeline component),
    which must stay inside ``folder``, also after symbolic links; else a one-line ``SpectralError``.

    The only links allowed out are those of the Hub cache, whose snapshot files link to the repo's
    ``blobs/``: inside a ``models--*/snapshots/<commit>`` tree, the repo folder is the bound."""
    folder = Path(folder)
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts:
        raise SpectralError(f"{named_by} {name!r}, a path outside {folder}: refused (a model's files must lie in its "
                            "folder); fix or re-download that file")
    path = folder / pure
    if os.path.lexists(path):
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in _bounds(folder)):
            raise SpectralError(f"{named_by} {name!r}, which links to {real}, outside {folder}: refused (a model's "
                                "files must lie in its folder); fix the link or re-download the model")
    return path


def _bounds(folder: Path) -> list[Path]:
    bounds = [Path(os.path.realpath(folder))]
    absolute = Path(os.path.abspath(folder))
    for parent in absolute.parents:
        if parent.name == "snapshots" and parent.parent.name.startswith(("models--", "datasets--", "spaces--")):
            bounds.append(Path(os.path.realpath(parent.parent)))
            break
    return bounds


def weight_sets(folder: Path) -> dict[str | None, WeightSet]:
    """All weight sets found directly in ``folder``, keyed by variant (None = plain files).

    Within one variant safetensors wins over ``.bin``, and a single file over an index (as in
    transformers). Shards without an index are accepted when all ``N`` of them are present.
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    for name in names:
        hit = classify(name)
        if hit is None:
            continue
        fmt, kind, m = hit
        slot = found.setdefault((fmt, m.group("v")), {"single": None, "index": None, "shards": {}})
        if kind == "shard":
            slot["shards"][int(m.group("i"))] = (int(m.group("n")), folder / name)
        elif slot[kind] is None:
            slot[kind] = folder / name

    sets: dict[str | None, WeightSet] = {}
    for fmt in FORMATS:  # safetensors first: it wins within a variant
        for (f, variant), slot in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if f == fmt and variant not in sets:
                sets[variant] = _weight_set(folder, fmt, variant, slot)
    return sets


def _weight_set(folder: Path, fmt: str, variant: str | None, slot: dict[str, Any]) -> WeightSet:
    if slot["single"] is not None:
        return WeightSet(fmt, variant, (slot["single"],))
    if slot["index"] is not None:
        return WeightSet(fmt, variant, (), slot["index"])
    shards: dict[int, tuple[int, Path]] = slot["shards"]
    total = max(n for n, _ in shards.values())
    missing = [i for i in range(1, total + 1) if i not in shards]
    if missing:
        example = next(iter(shards.values()))[1].name
        problem = (
            f"{folder} has shards like {example} but no index, and {len(missing)} of {total} shards are missing "
            f"(e.g. number {missing[0]}): re-download the model"
        )
        return WeightSet(fmt, variant, (), None, problem)
    return WeightSet(fmt, variant, tuple(shards[i][1] for i in range(1, total + 1)))


def choose(folder: Path, sets: dict[str | None, WeightSet], variant: str | None, *, fallback: bool = False) -> WeightSet:
    """Pick the weight set for ``variant`` and check its shards are all there.

    variant None: the plain files, else the only variant present. A named variant must exist,
    except with ``fallback`` (a diffusers pipeline component without that variant uses its plain
    files, as diffusers does).
    """
    if not sets:
        raise NoWeightsError(describe_missing(folder))
    if variant is not None:
        if variant in sets:
            return sets[variant].complete()
        if fallback and None in sets:
            return sets[None].complete()
        raise SpectralError(
            f"{folder} has no '{variant}' variant (found: {_variant_list(sets)}): pass one of those as --variant"
        )
    if None in sets:
        return sets[None].complete()
    if len(sets) == 1:
        return next(iter(sets.values())).complete()
    raise SpectralError(
        f"{folder} has several weight variants and no plain weights (found: {_variant_list(sets)}): "
        "pass --variant to choose one"
    )


def _variant_list(sets: dict[str | None, WeightSet]) -> str:
    return ", ".join("plain" if v is None else v for v in sorted(sets, key=lambda v: v or ""))


class NoWeightsError(SpectralError):
    """A folder holds no weight files we can read (the Hub layer then fetches more files)."""


# Files the Trainer / accelerate write beside the weights: never suggested as weights.
_TRAINING_EXTRAS = re.compile(r"^(optimizer|scheduler|scaler|rng_state.*|training_args|random_states.*)\.(pt|pth|bin|pkl)$")


def describe_missing(folder: Path, lead: str | None = None) -> str:
    """One line: what ``folder`` holds, what was expected."""
    folder = Path(folder)
    if is_snapshot(folder) or (folder.is_dir() and any(iter_snapshots(folder))):
        return snapshot_not_weights(folder)
    lead = lead or f"no weights in {folder}"
    entries = sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:10]]
    listing = ", ".join(shown) + (f", ... ({len(entries) - 10} more)" if len(entries) > 10 else "")
    hint = ""
    unsupported = sorted({_UNSUPPORTED[p.suffix] for p in entries if p.suffix in _UNSUPPORTED})
    odd = [
        p.name
        for p in entries
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") and p.is_file() and not _TRAINING_EXTRAS.match(p.name)
    ]
    if unsupported:
        hint += f"; {'/'.join(unsupported)} weights are not supported: convert them to safetensors"
    if odd:
        hint += f"; to read {odd[0]} pass that file itself as SOURCE"
    models = [p.name + "/" for p in entries if p.is_dir() and _holds_model(p)]
    if models:
        hint += f"; its subfolders {', '.join(models[:3])}{' ...' if len(models) > 3 else ''} hold models: pass one of them"
    return f"{lead} (found: {listing or 'nothing'}); expected {EXPECTED}{hint}"


def snapshot_not_weights(path: Path) -> str:
    """One line for a SOURCE that is an hf_spectral snapshot or record: spectra, not weights."""
    what = "is an hf_spectral snapshot" if is_snapshot(path) else "holds hf_spectral snapshots"
    return (f"{path} {what} (spectra, not weights): load one with "
            "hf_spectral.read_snapshot, follow a record with `hf-spectral dynamics`; to analyze or compare "
            "weights pass the checkpoint saved at that step (e.g. checkpoint-N/, --save_steps)")


def _holds_model(folder: Path) -> bool:
    try:
        return (folder / "model_index.json").is_file() or any(classify(p.name) for p in folder.iterdir())
    except OSError:
        return False


def pipeline_components(folder: Path) -> list[str]:
    """Subfolders a diffusers ``model_index.json`` names, in its order (those that exist)."""
    index = read_json(Path(folder) / "model_index.json")
    if not isinstance(index, dict):
        raise SpectralError(f"{Path(folder) / 'model_index.json'} is not a JSON object: fix or re-download it")
    names = []
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, (list, tuple)) or not value or value[0] is None:
            continue
        inside(Path(folder), key, f"{Path(folder) / 'model_index.json'} names component")
        names.append(key)
    return names


def expects_weights(folder: Path) -> bool:
    """Whether a pipeline component folder is a model (it has a ``config.json``); schedulers,
    tokenizers and feature extractors keep other config names and no weights."""
    return (Path(folder) / "config.json").is_file()

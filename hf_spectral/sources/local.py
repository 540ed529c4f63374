"""Local checkpoints: files and folders, diffusers pipelines, the checkpoint folders of Trainer runs.

(What a SOURCE string is — a snapshot, a record, a run, a checkpoint, a Hub id — is decided once, in
``classify.py``; Hub ids are fetched by ``hub.py``, which opens the downloaded folder with
``open_checkpoint``.) Local SOURCEs:

1. an existing file: ``*.safetensors``; ``*.bin`` / ``*.pt`` / ``*.pth`` / ``*.ckpt`` (torch.save);
   or a ``*.index*.json`` naming shards. Its ``config.json`` is the one beside it, if any.
2. an existing folder:
   - with ``checkpoint-N`` (or accelerate ``checkpoint_N``) subfolders: a training run, one
     checkpoint per subfolder sorted by N (step: ``trainer_state.json`` ``global_step``, else N).
     Weights at the run's root (the final model that ``Trainer.save_model`` or a diffusers
     training script writes next to the checkpoints) are NOT included: pass the root's weights
     file separately. A checkpoint folder without weights of its own but with model subfolders
     (``checkpoint-N/unet/``, as the diffusers training scripts save them) gives one part per
     such subfolder;
   - with ``model_index.json``: a diffusers pipeline, one checkpoint with a part per component
     that has weights (a component whose folder has a ``config.json`` must have weights);
   - with weights at its root (``model.safetensors``, shards + index, diffusers
     ``diffusion_pytorch_model*``, legacy ``pytorch_model.bin``, each possibly a variant such
     as ``model.fp16.safetensors``): one checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from hf_spectral.errors import SpectralError
from hf_spectral.sources.layout import (
    NoWeightsError,
    WeightSet,
    choose,
    describe_missing,
    expects_weights,
    pipeline_components,
    read_config,
    read_json,
    snapshot_not_weights,
    weight_sets,
)
from hf_spectral.sources.readers import SafetensorsReader, TorchBinReader
from hf_spectral.sources.types import Checkpoint, ModelPart, TensorReader
from hf_spectral.store import is_snapshot

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_RUN_DIR = re.compile(r"^checkpoint([-_])(\d+)$")


def open_checkpoint(
    path: str | Path,
    *,
    variant: str | None = None,
    source: str | None = None,
    label: str | None = None,
    step: int | None = None,
    revision: str | None = None,
    commit: str | None = None,
) -> Checkpoint:
    """One local checkpoint: a weights file, a model folder or a diffusers pipeline folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SpectralError(f"no such file or folder: {path}")
    meta: dict[str, object] = {}
    if path.is_file():
        if is_snapshot(path.parent):  # its spectra.safetensors holds U/V factors that would pass as matrices
            raise SpectralError(snapshot_not_weights(path.parent))
        reader = _file_reader(path)
        parts = [ModelPart("", reader, read_config(path.parent))]
        meta["format"] = "safetensors" if isinstance(reader, SafetensorsReader) else "bin"
    elif (path / "model_index.json").is_file():
        parts, meta = _pipeline_parts(path, variant)
    else:
        sets = weight_sets(path)
        if not sets and _RUN_DIR.match(path.name) and _model_subfolders(path):
            # diffusers training scripts save checkpoint-N/unet/ (and unet_ema/) via accelerate hooks
            parts, meta = _subfolder_parts(path, _model_subfolders(path), variant)
        else:
            weights = choose(path, sets, variant)
            parts = [ModelPart("", _reader(weights), read_config(path))]
            meta = {"format": weights.format, "variant": weights.variant}
    if step is None and path.is_dir():
        step = _step_of(path)
    return Checkpoint(
        label=label or path.name,
        path=path,
        parts=parts,
        source=source if source is not None else str(path),
        step=step,
        revision=revision,
        commit=commit,
        meta=meta,
    )


def run_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` / ``checkpoint_N`` subfolders of a training run, sorted by N."""
    found = []
    for child in Path(folder).iterdir():
        m = _RUN_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(2)), child))
    return [p for _, p in sorted(found)]


def _model_subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and expects_weights(p) and weight_sets(p))


def _step_of(folder: Path) -> int | None:
    """``global_step`` from ``trainer_state.json``, else N of a ``checkpoint-N`` folder name."""
    state_path = folder / "trainer_state.json"
    if state_path.is_file():
        state = read_json(state_path)
        if isinstance(state, dict) and isinstance(state.get("global_step"), int):
            return state["global_step"]
    m = _RUN_DIR.match(folder.name)
    # accelerate's checkpoint_N counts saves, not steps
    return int(m.group(2)) if m and m.group(1) == "-" else None


def _pipeline_parts(folder: Path, variant: str | None) -> tuple[list[ModelPart], dict[str, object]]:
    parts, meta = _subfolder_parts(folder, pipeline_components(folder), variant)
    index = read_json(folder / "model_index.json")
    return parts, {**meta, "format": "pipeline", "pipeline_class": index.get("_class_name")}


def _subfolder_parts(
    folder: Path, components: list[str], variant: str | None
) -> tuple[list[ModelPart], dict[str, object]]:
    """One part per component subfolder that has weights."""
    parts: list[ModelPart] = []
    variants: dict[str, str | None] = {}
    for component in components:
        sub = folder / component
        if not sub.is_dir():
            continue
        sets = weight_sets(sub)
        if not sets:
            if expects_weights(sub):
                raise NoWeightsError(describe_missing(sub, f"model component {sub} has a config.json but no weights"))
            continue  # scheduler, tokenizer, feature extractor: no weights
        weights = choose(sub, sets, variant, fallback=True)
        variants[component] = weights.variant
        parts.append(ModelPart(component, _reader(weights), read_config(sub)))
    if not parts:
        raise NoWeightsError(
            f"no component of {folder} has weights (components: {', '.join(components) or 'none'}): "
            "re-download or re-save it"
        )
    if variant is not None and variant not in variants.values():
        raise SpectralError(
            f"no component of {folder} has a '{variant}' variant: drop --variant or pass one the files have"
        )
    return parts, {"format": "components", "variants": variants}


def _reader(weights: WeightSet) -> TensorReader:
    cls = SafetensorsReader if weights.format == "safetensors" else TorchBinReader
    return cls(weights.files, weights.index)


def _file_reader(path: Path) -> TensorReader:
    name = path.name
    if name.endswith(".json") and ".index" in name:
        if ".safetensors." in name:
            return SafetensorsReader.from_index(path)
        if ".bin." in name:
            return TorchBinReader.from_index(path)
    if path.suffix == ".safetensors":
        return SafetensorsReader([path])
    if path.suffix in _TORCH_SUFFIXES:
        return TorchBinReader([path])
    raise SpectralError(
        f"{path} is not a weights file: pass a .safetensors, .bin/.pt/.pth/.ckpt or *.index.json file, or a model folder"
    )

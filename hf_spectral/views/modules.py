"""Module classes, parameter order and buffer names of a model: from a live model, or from a config
(the model built on the meta device), and matching them to checkpoint tensor names."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from hf_spectral._lazy import LazyModule

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

logger = logging.getLogger(__name__)

ModuleInfo = tuple[dict[str, str], list[str], set[str]]

# Layer classes the views understand. A subclass (``LoRACompatibleLinear``, ``BartScaledWordEmbedding``,
# ``ParametrizedConv1d``, ``NonDynamicallyQuantizableLinear``) is reported as the first of these in its MRO,
# so the planner never has to guess from a subclass's name.
_KNOWN_CLASSES = frozenset({
    "Linear", "Bilinear", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Embedding", "EmbeddingBag", "LSTM", "GRU", "RNN", "MultiheadAttention",
    "LayerNorm", "GroupNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm",
})


def canonical_class(module: torch.nn.Module) -> str:
    """The class name the views reason about: the nearest known layer class in the MRO, else the own name."""
    for cls in type(module).__mro__:
        if cls.__name__ in _KNOWN_CLASSES:
            return cls.__name__
    return type(module).__name__


def module_types_from_model(model: torch.nn.Module) -> ModuleInfo:
    """(parameter/buffer name -> owning module class, parameter names in ``named_parameters`` order, buffer names).

    Tied parameters are listed under every name (a checkpoint may hold either). A parametrized weight
    (``X.parametrizations.weight.original0``) and a pruned one (``X.weight_orig``) map to the class of ``X``,
    and the composed name ``X.weight`` is listed right after its first part.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    types: dict[str, str] = {}
    order: list[str] = []

    def owner_class(name: str) -> str:
        path = name.rsplit(".", 1)[0] if "." in name else ""
        # parametrizations live in ``X.parametrizations.<p>`` (a ParametrizationList): report X's class.
        if ".parametrizations." in f".{path}.":
            path = f".{path}".split(".parametrizations.", 1)[0].lstrip(".")
        module = modules.get(path, model)
        return canonical_class(module)

    for name, _ in model.named_parameters(remove_duplicate=False):
        cls = owner_class(name)
        types[name] = cls
        order.append(name)
        composed = composed_name(name)
        if composed is not None and composed not in types:
            types[composed] = cls
    buffers: set[str] = set()
    for name, _ in model.named_buffers(remove_duplicate=False):
        buffers.add(name)
        types.setdefault(name, owner_class(name))
    return types, order, buffers


def config_from_model(model: torch.nn.Module) -> dict[str, Any] | None:
    """The config dict a live model would save (what ``plan_matrices``/``alignment_pairs`` take as ``config``):
    transformers ``config.to_dict()`` with ``architectures``; diffusers ``config`` with ``_class_name``."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        out = dict(config.to_dict())
        out.setdefault("architectures", [type(model).__name__])
        return out
    if isinstance(config, Mapping):  # diffusers FrozenDict: the class name is only added on save
        out = dict(config)
        out.setdefault("_class_name", type(model).__name__)
        return out
    return None


def composed_name(name: str) -> str | None:
    """``X.weight`` for the stored parts of a composed weight (prune, weight norm, parametrization), else None."""
    if ".parametrizations." in name:
        head, _, tail = name.rpartition(".parametrizations.")
        param = tail.split(".", 1)[0]
        return f"{head}.{param}" if head else param
    for suffix in ("_orig", "_mask", "_g", "_v"):
        if name.endswith(suffix) and name.rsplit(".", 1)[-1].startswith("weight"):
            return name[: -len(suffix)]
    return None


def module_types_from_config(config: Mapping[str, Any] | None) -> ModuleInfo | None:
    """Module info of the model a config describes, built on the meta device (no memory, no download).

    transformers: the class ``config["architectures"][0]`` (else ``AutoModel`` for ``model_type``);
    diffusers: ``config["_class_name"]``. Names are given both as the model names them and as
    ``save_pretrained`` writes them (transformers 5 renames some keys on save). None when the model
    can't be built (unknown class, remote code, bad config): the registry and generic rules decide then.
    """
    if not config:
        return None
    try:
        key = json.dumps(config, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return None
    cached = _cached_module_types(key)
    if cached is None:
        return None
    types, order, buffers = cached
    return dict(types), list(order), set(buffers)


@lru_cache(maxsize=32)
def _cached_module_types(config_json: str) -> ModuleInfo | None:
    config = json.loads(config_json)
    try:
        with _quiet():
            model = _build_on_meta(config)
            if model is None:
                return None
            types, order, buffers = module_types_from_model(model)
            saved = _saved_names(model, list(types))
    except Exception as exc:  # any failure means "no module info", never an error for the user
        logger.debug("module_types_from_config: could not build %s: %s", _class_label(config), exc)
        return None
    if saved:
        types, order, buffers = _with_aliases(types, order, buffers, saved)
    return types, order, buffers


def _class_label(config: Mapping[str, Any]) -> str:
    return str(config.get("_class_name") or (config.get("architectures") or [None])[0] or config.get("model_type"))


def _build_on_meta(config: dict[str, Any]) -> torch.nn.Module | None:
    if config.get("_class_name"):
        import diffusers

        cls = getattr(diffusers, str(config["_class_name"]), None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
            return None  # a scheduler or pipeline config, not a model
        with _meta_context():
            return cls.from_config(config)
    if not config.get("model_type"):
        return None
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    for arch in config.get("architectures") or []:
        cls = getattr(transformers, str(arch), None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            with _meta_context():
                return cls(cfg)
    with _meta_context():
        return transformers.AutoModel.from_config(cfg)


@contextlib.contextmanager
def _meta_context():
    """Build parameters and buffers on the meta device and skip weight init and tying (all are wasted work)."""
    with contextlib.ExitStack() as stack:
        try:  # transformers >= 5; older versions just pay for the (meta, so cheap) init
            from transformers import initialization as init

            stack.enter_context(init.no_init_weights())
            stack.enter_context(init.no_tie_weights())
            if hasattr(init, "meta_device_safe_creation_ops"):
                stack.enter_context(init.meta_device_safe_creation_ops())
        except Exception:
            pass
        import torch

        stack.enter_context(torch.device("meta"))
        yield


@contextlib.contextmanager
def _quiet():
    level = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("transformers").setLevel(level)


def _saved_names(model: torch.nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Model name -> the name ``save_pretrained`` writes, for keys transformers renames one-to-one on save."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightRenaming, apply_renamings
    except Exception:
        return {}
    try:
        conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False) if not isinstance(c, PrefixChange)]
        renamings = [c.reverse_transform() for c in conversions[::-1]]
        if any(not isinstance(r, WeightRenaming) for r in renamings):
            # converters (fusing/splitting tensors) are many-to-one: only keep the pure renamings
            renamings = [r for r in renamings if isinstance(r, WeightRenaming)]
        out = {}
        for name in names:
            saved = apply_renamings(name, renamings)
            if saved != name:
                out[name] = saved
        return out
    except Exception:
        return {}


def _with_aliases(types: dict[str, str], order: list[str], buffers: set[str], saved: Mapping[str, str]) -> ModuleInfo:
    new_types: dict[str, str] = {}
    for name, cls in types.items():
        if name in saved:
            new_types.setdefault(saved[name], cls)
        new_types.setdefault(name, cls)
    new_order = [n for name in order for n in ((saved[name], name) if name in saved else (name,))]
    new_buffers = set(buffers) | {saved[b] for b in buffers if b in saved}
    return new_types, new_order, new_buffers


class NameMatcher:
    """Finds the model name behind a checkpoint key: exact, else by dotted suffix either way
    (``h.0.attn.c_attn.weight`` ~ ``transformer.h.0.attn.c_attn.weight``, and the reverse)."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known: dict[str, int] = {}
        for name in known:
            self.known.setdefault(name, len(self.known))
        self._suffixes: dict[str, list[str]] = {}
        for name in self.known:
            parts = name.split(".")
            for i in range(1, len(parts)):
                self._suffixes.setdefault(".".join(parts[i:]), []).append(name)

    def match(self, name: str) -> str | None:
        if name in self.known:
            return name
        hits = self._suffixes.get(name)
        if hits:
            return hits[0] if len(hits) == 1 else None  # ambiguous suffix: no guess
        parts = name.split(".")
        for i in range(1, len(parts) - 1):  # the checkpoint has an extra prefix: strip it
            stripped = ".".join(parts[i:])
            if stripped in self.known:
                return stripped
            hits = self._suffixes.get(stripped)
            if hits:
                return hits[0] if len(hits) == 1 else None
        return None

    def index(self, model_name: str) -> int:
        return self.known[model_name]

"""From named tensors (+ config, module classes) to the matrices to decompose and the tensors left out.

Every stored tensor with 2 or more dimensions becomes a ``MatrixSpec`` or a ``SkippedTensor`` with a
reason; 1-D tensors (biases, norms) are left out silently (paper-notes §1). Orientation comes from the
owning module's class when known (``view="module"``), else from the registry's rules for the config's
model type (``"registry"``), else from generic rules (``"default"``: 2-D as stored, a float tensor with
3 or more dims is taken for a plain (not transposed) convolution). The order is ``named_parameters()``
order: the module info's when given, else the registry's order rules for the model type.
"""

from __future__ import annotations

import math
import re
import dataclasses
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from hf_spectral.errors import SpectralError
from hf_spectral.tensor_info import TensorInfo
from hf_spectral.views.modules import NameMatcher, composed_name
from hf_spectral.views.registry import Rules, rules_for
from hf_spectral.views.types import MatrixSpec, SkippedTensor

Patterns = str | Sequence[str] | None

_CONV = {"Conv1d", "Conv2d", "Conv3d"}
_CONV_T = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
_LINEAR = {"Linear"}
_EMBEDDING = {"Embedding", "EmbeddingBag"}
_RNN_GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN": ""}
_RNN_NAME = re.compile(r"(?:^|\.)weight_(?P<which>ih|hh|hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$")


@dataclass(frozen=True)
class _Candidate:
    """One weight to plan: a stored tensor, or the stored parts of a composed weight."""

    name: str  # the weight's name (``X.weight`` for composed weights), unprefixed
    parts: tuple[TensorInfo, ...]  # in the order build_matrix reads them
    main: TensorInfo  # the part whose shape/dtype the matrix has (orig, v, or the tensor)
    composed: str | None = None  # "prune" | "weight_norm"


def plan_matrices(
    tensors: Sequence[TensorInfo],
    *,
    config: Mapping[str, Any] | None = None,
    module_types: Mapping[str, str] | None = None,
    buffers: Collection[str] = (),
    include: Patterns = None,
    exclude: Patterns = None,
    prefix: str = "",
) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """The matrices to decompose and the ≥2-D tensors left out (with reasons), in model order.

    ``module_types`` maps parameter names to their module's class (``module_types_from_model`` /
    ``module_types_from_config``); checkpoint keys are matched to it exactly or by dotted suffix, and its
    key order is the output order. Without it, the registry's rules for the config's model type give the
    order (``named_parameters()`` order for the families it knows completely) and, for those families, the
    classes (``rules_for(config).complete``). ``prefix`` is prepended to every produced name;
    ``include``/``exclude`` regexes (``re.search``) select on the prefixed names.
    """
    rules = rules_for(config)
    types = dict(module_types or {})
    matcher = NameMatcher(list(types) + list(buffers)) if (types or buffers) else None
    buffer_set = set(buffers)
    shapes = {t.name: tuple(t.shape) for t in tensors}
    specs: list[tuple[tuple[Any, ...], MatrixSpec]] = []
    skipped: list[tuple[tuple[Any, ...], SkippedTensor]] = []
    for item in _candidates(tensors):
        if isinstance(item, SkippedTensor):
            key = _order_key(item.name, (), matcher, rules)
            skipped.append((key, _prefixed(item, prefix)))
            continue
        if item.main.ndim < 2:
            continue  # biases, norms, scalars: excluded silently (paper-notes §1)
        model_name = _match(item, matcher)
        cls = types.get(model_name) if model_name else None
        is_buffer = model_name in buffer_set if model_name else False
        result = _plan_one(item, cls, is_buffer, rules, shapes)
        key = _order_key(item.name, [p.name for p in item.parts], matcher, rules)
        if isinstance(result, SkippedTensor):
            skipped.append((key, _prefixed(result, prefix)))
        else:
            specs.append((key, _with_name(result, prefix + result.name)))
    specs.sort(key=lambda t: t[0])
    skipped.sort(key=lambda t: t[0])
    return select(
        [s for _, s in specs], [s for _, s in skipped], include=include, exclude=exclude, strict=True
    )


def select(
    specs: Sequence[MatrixSpec],
    skipped: Sequence[SkippedTensor] = (),
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    strict: bool = True,
) -> tuple[list[MatrixSpec], list[SkippedTensor]]:
    """Keep the names matching any ``include`` regex and no ``exclude`` regex (both lists are filtered).

    ``strict``: raise ``SpectralError`` when patterns were given and no matrix is left (the engine can
    pass False per model part and check the union itself).
    """
    inc = compile_patterns(include, "include")
    exc = compile_patterns(exclude, "exclude")
    if not inc and not exc:
        return list(specs), list(skipped)

    def keep(name: str) -> bool:
        return (not inc or any(p.search(name) for p in inc)) and not any(p.search(name) for p in exc)

    kept = [s for s in specs if keep(s.name)]
    if strict and specs and not kept:
        shown = ", ".join(s.name for s in specs[:5]) + (f", ... ({len(specs)} in all)" if len(specs) > 5 else "")
        given = " ".join(f"--{what} {p.pattern!r}" for what, ps in (("include", inc), ("exclude", exc)) for p in ps)
        raise SpectralError(f"{given} select no weight matrix; available matrices: {shown}")
    return kept, [s for s in skipped if keep(s.name)]


def compile_patterns(patterns: Patterns, what: str) -> list[re.Pattern[str]]:
    """The ``include`` / ``exclude`` regexes compiled; one that does not compile is a one-line
    ``SpectralError`` (``AnalysisOptions`` calls this at construction, so the callback, the tracker
    and the CLI all fail before any work)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except (re.error, TypeError) as err:
            raise SpectralError(f"--{what} / {what}= {p!r} is not a valid regular expression ({err}); "
                                "fix the pattern") from None
    return out


# ------------------------------------------------------------------------------------ candidates


def _candidates(tensors: Sequence[TensorInfo]) -> list[_Candidate | SkippedTensor]:
    """Group the stored parts of composed weights; lone parts become SkippedTensors."""
    groups: dict[tuple[str, str], dict[str, TensorInfo]] = {}
    out: list[_Candidate | SkippedTensor] = []
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            continue
        seen.add(t.name)
        base = composed_name(t.name)
        if base is None:
            out.append(_Candidate(t.name, (t,), t))
            continue
        if ".parametrizations." in t.name:
            kind, role = "param", t.name.rsplit(".", 1)[-1]
        else:
            role = t.name[len(base):]
            kind = "prune" if role in ("_orig", "_mask") else "wn"
        groups.setdefault((base, kind), {})[role] = t
    for (base, kind), parts in groups.items():
        out.append(_compose(base, kind, parts))
    return out


def _compose(base: str, kind: str, parts: dict[str, TensorInfo]) -> _Candidate | SkippedTensor:
    if kind == "prune":
        orig, mask = parts.get("_orig"), parts.get("_mask")
        if orig and mask and orig.shape == mask.shape:
            return _Candidate(base, (orig, mask), orig, "prune")
        lone = orig or mask
        assert lone is not None
        why = (f"pruning mask shape {mask.shape} differs from {orig.name} {orig.shape}" if orig and mask
               else f"half of a pruned weight: {base}_orig and {base}_mask are both needed")
        return _lone(lone, why)
    g, v = (parts.get("_g"), parts.get("_v")) if kind == "wn" else (parts.get("original0"), parts.get("original1"))
    if g and v and len(g.shape) in (0, len(v.shape)) and all(a in (1, b) for a, b in zip(g.shape, v.shape)):
        return _Candidate(base, (g, v), v, "weight_norm")
    lone = next(iter(parts.values()))
    if kind == "param" and set(parts) == {"original"}:
        why = f"parametrized weight {base}: its effective value depends on the parametrization's code, not stored"
    elif g and v:
        why = f"weight-norm magnitude {g.shape} does not broadcast to direction {v.shape}"
    else:
        why = f"half of a weight-norm pair: {base}'s magnitude (g) and direction (v) are both needed"
    return _lone(v or lone, why)


def _lone(t: TensorInfo, why: str) -> _Candidate | SkippedTensor:
    if t.ndim < 2:
        return _Candidate(t.name, (t,), t)  # 1-D: dropped silently downstream
    return SkippedTensor(t.name, tuple(t.shape), t.dtype, why)


def _match(item: _Candidate, matcher: NameMatcher | None) -> str | None:
    if matcher is None:
        return None
    for name in (item.name, *(p.name for p in item.parts)):
        hit = matcher.match(name)
        if hit is not None:
            return hit
    return None


def _order_key(name: str, parts: Sequence[str], matcher: NameMatcher | None, rules: Rules) -> tuple[Any, ...]:
    """The model's ``named_parameters()`` order: from module info when known, else from the registry's
    rules for the family (names the model does not know come after those it does)."""
    if matcher is not None:
        hits = [matcher.match(n) for n in (name, *parts)]
        idx = [matcher.index(h) for h in hits if h is not None]
        if idx:
            return (0, min(idx), rules.order_key(name))
        return (1, 0, rules.order_key(name))
    return (0, 0, rules.order_key(name))


# ------------------------------------------------------------------------------------ one weight


def _plan_one(item: _Candidate, cls: str | None, is_buffer: bool, rules: Rules,
              shapes: Mapping[str, tuple[int, ...]]) -> MatrixSpec | SkippedTensor:
    t = item.main
    shape = tuple(t.shape)
    if item.composed is None and (is_buffer or rules.is_buffer(item.name)):
        return SkippedTensor(item.name, shape, t.dtype, "buffer (not a trained parameter)")
    if not t.is_float:
        return SkippedTensor(item.name, shape, t.dtype, f"integer/quantized dtype {t.dtype}: not a float weight")
    facts: dict[str, Any] = {"composed": item.composed} if item.composed else {}  # MatrixSpec fields
    if cls is not None:
        view = _by_module(item.name, shape, cls, facts)
    else:
        view = _by_rules(item.name, shape, rules, shapes, facts)
    if isinstance(view, str):
        return SkippedTensor(item.name, shape, t.dtype, view)
    kind, rc, how = view
    if kind in ("linear", "matrix", "conv1d_hf") and rules.is_fused_qkv(item.name):
        kind = "fused_qkv"
        facts.update(_qkv_facts(item.name, rc, rules))
        how = "module" if cls is not None else "registry"
    return MatrixSpec(
        name=item.name, kind=kind, tensors=tuple(p.name for p in item.parts), tensor_shape=shape,
        shape=(int(rc[0]), int(rc[1])), dtype=t.dtype, view=how, **facts,
    )


_View = tuple[str, tuple[int, ...], str] | str  # (kind, (rows, cols), view) or the reason to skip


def _by_module(name: str, shape: tuple[int, ...], cls: str, facts: dict[str, Any]) -> _View:
    """Orientation from the owning module's class."""
    two_d = len(shape) == 2
    if "Norm" in cls:
        return f"normalization parameter of {cls}"
    if cls == "Conv1D" and two_d:  # HF GPT-2 family: stored (in, out)
        facts["transposed"] = True
        return "conv1d_hf", (shape[1], shape[0]), "module"
    if cls in _LINEAR and two_d:
        return "linear", shape, "module"
    if cls in _CONV and len(shape) >= 3:
        return "conv", _conv_shape(shape, facts), "module"
    if cls in _CONV_T and len(shape) >= 3:  # stored (in, out, *k)
        return "conv_transpose", _conv_shape((shape[1], shape[0], *shape[2:]), facts), "module"
    if cls in _EMBEDDING and two_d:
        return "embedding", shape, "module"
    if cls in _RNN_GATES and _RNN_NAME.search(name) and two_d:
        kind, rc = _rnn(name, shape, _RNN_GATES[cls], facts)
        return kind, rc, "module"
    if cls == "MultiheadAttention" and two_d:
        return "linear", shape, "module"  # in_proj_weight is marked fused by the registry; q/k/v_proj_weight plain
    return _bare(name, shape, f" in {cls}", "module")


def _by_rules(name: str, shape: tuple[int, ...], rules: Rules, shapes: Mapping[str, tuple[int, ...]],
              facts: dict[str, Any]) -> _View:
    """Module unknown: the registry's rules for the model type, else the generic defaults."""
    two_d = len(shape) == 2
    if rules.is_bare(name):
        return _bare(name, shape, "", "registry")
    if _RNN_NAME.search(name) and two_d:  # torch's own parameter names for LSTM/GRU/RNN
        kind, rc = _rnn(name, shape, _gates_from_hh(name, shapes), facts)
        return kind, rc, "default"
    if rules.is_conv1d(name) and two_d:
        facts["transposed"] = True
        return "conv1d_hf", (shape[1], shape[0]), "registry"
    if rules.is_embedding(name) and two_d:
        return "embedding", shape, "registry"
    if rules.complete:  # the family's other weights are all Linear layers and plain convolutions
        return ("linear", shape, "registry") if two_d else ("conv", _conv_shape(shape, facts), "registry")
    if two_d:
        return "matrix", shape, "default"
    return "conv", _conv_shape(shape, facts), "default"  # documented assumption: a plain, not transposed, conv


def _bare(name: str, shape: tuple[int, ...], where: str, view: str) -> _View:
    """A parameter owned directly by a custom module (ViT ``cls_token``, ``position_embeddings``)."""
    squeezed = _squeeze(shape)
    if len(squeezed) < 2:
        return f"vector stored as {shape}{where}: no matrix"
    if len(squeezed) > 2:
        leaf = name.rsplit(".", 1)[-1]
        return f"{len(shape)}-D parameter {leaf!r}{where}: no known matrix view (add a registry rule)"
    return "matrix", squeezed, view


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop leading 1-dims (ViT ``cls_token`` (1, 1, d), ``position_embeddings`` (1, n, d))."""
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def _conv_shape(shape: tuple[int, ...], facts: dict[str, Any]) -> tuple[int, int]:
    """(out, in, *k) → (out, in·∏k) (paper-notes §1)."""
    facts["kernel_size"] = tuple(int(k) for k in shape[2:])
    facts["in_channels"] = int(shape[1])
    return shape[0], math.prod(shape[1:])


def _rnn(name: str, shape: tuple[int, ...], gates: str | None, facts: dict[str, Any]) -> tuple[str, tuple[int, int]]:
    m = _RNN_NAME.search(name)
    assert m is not None
    if m["which"] == "hr":
        return "linear", shape  # LSTM projection (proj_size)
    facts["layer"] = int(m["layer"])
    facts["direction"] = "reverse" if m["rev"] else "forward"
    if gates == "ifgo":
        facts["gates"] = gates
        facts["hidden_size"] = shape[0] // 4
        return ("lstm_ih" if m["which"] == "ih" else "lstm_hh"), shape
    if gates:
        facts["gates"] = gates
        facts["hidden_size"] = shape[0] // len(gates)
    return "matrix", shape


def _gates_from_hh(name: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Module unknown: weight_hh_l{k} is (gates·H, H), so its row/column ratio tells LSTM (4), GRU (3), RNN (1)."""
    hh = shapes.get(re.sub(r"weight_ih_l", "weight_hh_l", name))
    if not hh or len(hh) != 2 or hh[0] % hh[1]:
        return None  # no sibling, or an LSTM with proj_size: role unknown
    return {4: "ifgo", 3: "rzn", 1: ""}.get(hh[0] // hh[1])


def _qkv_facts(name: str, rc: tuple[int, int], rules: Rules) -> dict[str, Any]:
    """num_heads, head_dim and the row ranges of Q, K, V (``qkv_split``: name → tuple of ranges whose
    concatenation is that projection; one range each for [Q; K; V] blocks, one per head when interleaved)."""
    rows, width = rc
    layout = rules.qkv_layout(name)
    nh = rules.num_heads(width)
    out: dict[str, Any] = {"qkv_layout": layout}
    if nh is None:
        if layout == "blocks" and rows % 3 == 0:
            d = rows // 3
            out["qkv_split"] = {"q": ((0, d),), "k": ((d, 2 * d),), "v": ((2 * d, 3 * d),)}
        return out
    out["num_heads"] = nh
    if layout == "per_head":
        if rows % (3 * nh) == 0:
            hd = rows // (3 * nh)
            out["head_dim"] = hd
            out["qkv_split"] = {
                p: tuple((h * 3 * hd + j * hd, h * 3 * hd + (j + 1) * hd) for h in range(nh)) for j, p in enumerate("qkv")
            }
        return out
    nkv = rules.num_kv_heads() or nh
    hd = rules.head_dim() or (width // nh if width % nh == 0 else None)
    if hd is not None and (nh + 2 * nkv) * hd == rows:
        q, k = nh * hd, nkv * hd
        out["head_dim"] = hd
        if nkv != nh:
            out["num_kv_heads"] = nkv
        out["qkv_split"] = {"q": ((0, q),), "k": ((q, q + k),), "v": ((q + k, q + 2 * k),)}
    return out


def _prefixed(s: SkippedTensor, prefix: str) -> SkippedTensor:
    return SkippedTensor(prefix + s.name, s.shape, s.dtype, s.reason) if prefix else s


def _with_name(spec: MatrixSpec, name: str) -> MatrixSpec:
    if name == spec.name:
        return spec
    return dataclasses.replace(spec, name=name)

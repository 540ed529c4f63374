"""Which planned matrices pair for alignment (paper-notes §2, Eqs. 3-4): generic, pattern-driven rules.

The rules here know shapes and data flow, never architecture names: the registry instantiates them with
the regexes of each family. A pair is emitted only when both matrices are planned and their shared
dimension agrees (``connect``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from hf_spectral.views.naming import natural_key
from hf_spectral.views.types import AlignmentMode, AlignmentPair, MatrixSlice, MatrixSpec

if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.views.registry import Rules

Range = tuple[int, int]
CONV_KINDS = ("conv", "conv_transpose")
LSTM_KINDS = ("lstm_ih", "lstm_hh")


class Rule(Protocol):
    def pairs(self, specs: list[MatrixSpec], rules: "Rules") -> list[AlignmentPair]: ...


# --------------------------------------------------------------------------------------------- connect


def connect(prev: MatrixSpec, nxt: MatrixSpec, *, prev_rows: Range | None = None, next_cols: Range | None = None,
            prev_tag: str = "", next_tag: str = "", gate: str | None = None) -> AlignmentPair | None:
    """prev's output space → next's input space, when their dimensions agree; the mode follows the kinds:
    an embedding (vocab, d) offers its d side (``in_in``), a conv consumer is compared at its kernel centre
    (``conv_centre``), anything else ``out_in``. ``gate``: prev's rows are that gate of a stacked recurrent matrix."""
    out_dim = _len(prev_rows) if prev_rows else prev.shape[0]
    in_cols = _len(next_cols) if next_cols else nxt.shape[1]
    kernel: tuple[int, ...] | None = None
    mode: AlignmentMode
    if prev.kind == "embedding" and prev_rows is None:
        if nxt.kind in CONV_KINDS or prev.shape[1] != in_cols:
            return None
        mode = "in_in"
    elif nxt.kind in CONV_KINDS:
        kernel = tuple(nxt.kernel_size or ())
        k = math.prod(kernel) if kernel else 1
        if in_cols % k or in_cols // k != out_dim:
            return None
        mode = "conv_centre"
    elif out_dim != in_cols:
        return None
    else:
        mode = "out_in"
    label = f"{_short(prev.name)}{prev_tag} → {_short(nxt.name)}{next_tag}"
    return AlignmentPair(MatrixSlice(prev.name, rows=prev_rows), MatrixSlice(nxt.name, cols=next_cols), mode, label,
                         gate=gate, kernel_size=kernel)


def qk_pair(q: MatrixSpec, k: MatrixSpec, q_rows: Range | None, k_rows: Range | None, heads: int | None,
            tag: str = "") -> AlignmentPair | None:
    """Q↔K: the head-output spaces that QKᵀ contracts, split in ``heads`` row blocks."""
    nq = _len(q_rows) if q_rows else q.shape[0]
    nk = _len(k_rows) if k_rows else k.shape[0]
    if nq != nk or (heads and nq % heads):
        return None  # grouped K/V heads: no one-to-one head blocks
    label = f"{_short(q.name)}[Q{tag}] ↔ {_short(k.name)}[K{tag}]"
    return AlignmentPair(MatrixSlice(q.name, rows=q_rows, heads=heads), MatrixSlice(k.name, rows=k_rows, heads=heads),
                         "qk_heads", label)


def _len(r: Range) -> int:
    return r[1] - r[0]


def _short(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def local_name(name: str) -> str:
    """The name inside its model part (``unet/conv_in.weight`` → ``conv_in.weight``)."""
    return name.rsplit("/", 1)[-1]


@lru_cache(maxsize=None)
def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _matching(specs: Sequence[MatrixSpec], patterns: Sequence[str]) -> list[MatrixSpec]:
    """Specs matching the patterns, grouped by pattern order (then model order): a data-flow chain."""
    out: list[MatrixSpec] = []
    for pattern in patterns:
        out.extend(s for s in specs if _re(pattern).search(local_name(s.name)) and s not in out)
    return out


def _chain(specs: Sequence[MatrixSpec]) -> list[AlignmentPair]:
    return [p for a, b in zip(specs, specs[1:]) if (p := connect(a, b)) is not None]


def _add(out: list[AlignmentPair], pair: AlignmentPair | None) -> None:
    if pair is not None:
        out.append(pair)


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Sequential:
    """Consecutive matrices in order (plain MLPs, VGG, ResNet without its shortcuts); pairs whose dims
    don't agree are skipped. ``stages`` (regexes) fix the order when given: matrices are taken stage by
    stage and those matching no stage are left out. LSTM stacks pair inside (ih_l → hh_l, ih_l/hh_l →
    ih_{l+1} on the matching direction's input half, using the ``g`` gate rows) and feed what follows."""

    stages: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def pairs(self, specs: list[MatrixSpec], rules: "Rules") -> list[AlignmentPair]:
        chosen = _matching(specs, self.stages) if self.stages else list(specs)
        chosen = [s for s in chosen if not any(_re(p).search(local_name(s.name)) for p in self.exclude)]
        out: list[AlignmentPair] = []
        prev_outputs: list[_Output] = []
        for unit in _units(chosen):
            if unit[0].kind in LSTM_KINDS:
                inputs, outputs = _lstm_pairs(unit, out)
            else:
                inputs, outputs = unit, [(unit[0], None, None, 1)]
            for prev, rows, direction, n_dirs in prev_outputs:
                for nxt in inputs:
                    cols = _direction_cols(nxt, rows, direction, n_dirs)
                    _add(out, connect(prev, nxt, prev_rows=rows, next_cols=cols, prev_tag="[g]" if rows else "",
                                      next_tag=_dir_tag(cols, direction), gate=_G if rows else None))
            prev_outputs = outputs
        return out


def _units(specs: list[MatrixSpec]) -> list[list[MatrixSpec]]:
    """One unit per matrix, except that the matrices of one LSTM module form one unit."""
    units: list[list[MatrixSpec]] = []
    for spec in specs:
        module = _lstm_module(spec)
        if module is not None and units and _lstm_module(units[-1][0]) == module:
            units[-1].append(spec)
        else:
            units.append([spec])
    return units


def _lstm_module(spec: MatrixSpec) -> str | None:
    return spec.name.rpartition(".")[0] if spec.kind in LSTM_KINDS and spec.layer is not None else None


_G = "g"  # prev rows are the g gate's block of the stacked (i, f, g, o) matrix
_Output = tuple[MatrixSpec, "Range | None", "int | None", int]  # spec, row slice, direction, number of directions


def _lstm_pairs(unit: list[MatrixSpec], out: list[AlignmentPair]) -> tuple[list[MatrixSpec], list[_Output]]:
    """Pairs inside one LSTM stack; returns (first-layer inputs, last-layer outputs as g-gate row slices)."""
    cells: dict[tuple[int, int], dict[str, MatrixSpec]] = {}  # (layer, direction) -> {"ih": spec, "hh": spec}
    for spec in unit:
        direction = 1 if spec.direction == "reverse" else 0
        cells.setdefault((int(spec.layer or 0), direction), {})[spec.kind[-2:]] = spec
    layers = sorted({layer for layer, _ in cells})
    n_dirs = len({d for _, d in cells})

    def g_rows(spec: MatrixSpec) -> Range:
        h = int(spec.hidden_size or spec.shape[0] // 4)
        return (2 * h, 3 * h)  # gate order i, f, g, o: the paper reports the "g" (cell input) gate

    def outputs(layer: int) -> list[_Output]:
        return [(cell[w], g_rows(cell[w]), d, n_dirs) for (lay, d), cell in sorted(cells.items()) if lay == layer
                for w in ("ih", "hh") if w in cell]

    for (layer, d), cell in sorted(cells.items()):
        if "ih" in cell and "hh" in cell:
            _add(out, connect(cell["ih"], cell["hh"], prev_rows=g_rows(cell["ih"]), prev_tag="[g]", gate=_G))
    for layer, nxt_layer in zip(layers, layers[1:]):
        for prev, rows, d, nd in outputs(layer):
            for (lay, _), cell in sorted(cells.items()):
                if lay == nxt_layer and "ih" in cell:
                    cols = _direction_cols(cell["ih"], rows, d, nd)
                    _add(out, connect(prev, cell["ih"], prev_rows=rows, next_cols=cols, prev_tag="[g]",
                                      next_tag=_dir_tag(cols, d), gate=_G))
    first = [cell["ih"] for (lay, _), cell in sorted(cells.items()) if lay == layers[0] and "ih" in cell]
    return first, outputs(layers[-1])


def _direction_cols(nxt: MatrixSpec, rows: Range | None, direction: int | None, n_dirs: int) -> Range | None:
    """A bidirectional layer's output is [forward; reverse]: the next layer reads direction d in its d-th column half."""
    if direction is None or n_dirs < 2 or rows is None:
        return None
    width = _len(rows)
    if nxt.shape[1] != width * n_dirs:
        return None
    return (direction * width, (direction + 1) * width)


def _dir_tag(cols: Range | None, direction: int | None) -> str:
    return "" if cols is None else ("[fwd]" if direction == 0 else "[rev]")


@dataclass(frozen=True)
class Transformer:
    """A Transformer stack. ``layer``: regex with a named group ``i`` (the layer index) matched on the name;
    ``roles``: role → regex on the rest of the name after the layer match. Roles: ``qkv`` (fused) or
    ``q``/``k``/``v``, ``o``, ``mlp_in``, ``mlp_out``. ``stem``: the chain before layer 0 (embedding, patch
    or feature convs, projection), in data-flow order. ``heads``: chains fed by the last layer."""

    layer: str
    roles: Mapping[str, str]
    stem: tuple[str, ...] = ()
    heads: tuple[tuple[str, ...], ...] = ()

    def pairs(self, specs: list[MatrixSpec], rules: "Rules") -> list[AlignmentPair]:
        layers = self._layers(specs)
        if not layers:
            return []
        out: list[AlignmentPair] = []
        stem = _matching(specs, self.stem)
        out.extend(_chain(stem))
        prev_out: MatrixSpec | None = stem[-1] if stem else None
        for roles in layers:
            inputs = [roles[r] for r in ("qkv", "q", "k", "v") if r in roles]
            if prev_out is not None:
                for nxt in inputs:
                    _add(out, connect(prev_out, nxt))
            self._inside(roles, rules, out)
            for role in ("mlp_out", "mlp_in", "o"):
                if role in roles:
                    prev_out = roles[role]
                    break
        for chain in self.heads:
            head = _matching(specs, chain)
            if head and prev_out is not None:
                _add(out, connect(prev_out, head[0]))
            out.extend(_chain(head))
        return out

    def _layers(self, specs: list[MatrixSpec]) -> list[dict[str, MatrixSpec]]:
        found: dict[tuple[str, int], dict[str, MatrixSpec]] = {}
        for spec in specs:
            name = local_name(spec.name)
            m = _re(self.layer).search(name)
            if not m:
                continue
            rest = name[m.end():]
            for role, pattern in self.roles.items():
                if _re(pattern).search(rest):
                    found.setdefault((name[: m.start("i")], int(m["i"])), {}).setdefault(role, spec)
                    break
        stacks = list(dict.fromkeys(stack for stack, _ in found))  # in model order
        return [found[key] for stack in stacks for key in sorted(k for k in found if k[0] == stack)]

    @staticmethod
    def _inside(roles: dict[str, MatrixSpec], rules: "Rules", out: list[AlignmentPair]) -> None:
        o = roles.get("o")
        if "qkv" in roles:
            qkv = roles["qkv"]
            split = qkv.qkv_split
            if split:
                q_r, k_r, v_r = split["q"], split["k"], split["v"]
                if len(q_r) == 1:  # [Q; K; V] blocks
                    _add(out, qk_pair(qkv, qkv, q_r[0], k_r[0], qkv.num_heads))
                    if o is not None and len(v_r) == 1:
                        _add(out, connect(qkv, o, prev_rows=v_r[0], prev_tag="[V]"))
                else:  # heads interleaved: one pair per head; head h's V feeds O's h-th column block
                    for h, (qh, kh, vh) in enumerate(zip(q_r, k_r, v_r)):
                        _add(out, qk_pair(qkv, qkv, qh, kh, None, tag=f"{h}"))
                        if o is not None:
                            cols = (h * _len(vh), (h + 1) * _len(vh))
                            _add(out, connect(qkv, o, prev_rows=vh, next_cols=cols, prev_tag=f"[V{h}]",
                                              next_tag=f"[head {h}]"))
        else:
            if "q" in roles and "k" in roles:
                _add(out, qk_pair(roles["q"], roles["k"], None, None, rules.num_heads(roles["q"].shape[1])))
            if "v" in roles and o is not None:
                _add(out, connect(roles["v"], o))
        chain = [roles[r] for r in ("o", "mlp_in", "mlp_out") if r in roles]
        out.extend(_chain(chain))


@dataclass(frozen=True)
class Stage:
    """One stage of a ``ConvPath``: ``block`` is a regex on the name (a named group ``i`` orders repeated
    blocks numerically); ``members`` are regexes on the rest of the name, in data-flow order (within one
    member, natural name order). No members: the block match itself is the matrix."""

    block: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvPath:
    """A conv network walked stage by stage (UNet, VAE): consecutive matrices pair along the path.
    ``skip_from`` matrices push their output on a stack that ``skip_into`` matrices pop, reading
    [hidden; skip] channels (UNet skip connections: down block k → up block k). ``feeds``: (suffix, suffix)
    sibling pairs such as a resnet's time-embedding projection → the conv it is added before.
    ``chains``: extra sequential chains (time-embedding MLP). ``attention``: suffixes of q, k, v, o."""

    path: tuple[Stage, ...]
    skip_from: tuple[str, ...] = ()
    skip_into: str | None = None
    feeds: tuple[tuple[str, str], ...] = ()
    chains: tuple[tuple[str, ...], ...] = ()
    attention: tuple[str, str, str, str] | None = None

    def pairs(self, specs: list[MatrixSpec], rules: "Rules") -> list[AlignmentPair]:
        path = self._walk(specs)
        out: list[AlignmentPair] = []
        stack: list[MatrixSpec] = []
        for i, spec in enumerate(path):
            prev = path[i - 1] if i else None
            name = local_name(spec.name)
            if self.skip_into and _re(self.skip_into).search(name) and stack:
                skip = stack.pop()
                self._concat(prev, skip, spec, out)
            elif prev is not None:
                _add(out, connect(prev, spec))
            if any(_re(p).search(name) for p in self.skip_from):
                stack.append(spec)
        by_name = {s.name: s for s in specs}
        for a_suffix, b_suffix in self.feeds:
            for spec in specs:
                if spec.name.endswith(a_suffix):
                    target = by_name.get(spec.name[: -len(a_suffix)] + b_suffix)
                    if target is not None:
                        _add(out, connect(spec, target))
        for chain in self.chains:
            out.extend(_chain(_matching(specs, chain)))
        if self.attention:
            q_s, k_s, v_s, o_s = self.attention
            for q in specs:
                if q.name.endswith(q_s):
                    base = q.name[: -len(q_s)]
                    k, v, o = (by_name.get(base + s) for s in (k_s, v_s, o_s))
                    if k is not None:
                        _add(out, qk_pair(q, k, None, None, rules.num_heads(q.shape[1])))
                    if v is not None and o is not None:
                        _add(out, connect(v, o))
        return out

    def _walk(self, specs: list[MatrixSpec]) -> list[MatrixSpec]:
        """The matrices along the path: stage by stage, block index, member order, natural name order."""
        path: list[MatrixSpec] = []
        for stage in self.path:
            items: list[tuple[int, int, tuple[Any, ...], MatrixSpec]] = []
            for spec in specs:
                name = local_name(spec.name)
                m = _re(stage.block).search(name)
                if not m:
                    continue
                block = int(m["i"]) if m.groupdict().get("i") is not None else -1
                rest = name[m.end():]
                if not stage.members:
                    items.append((block, 0, natural_key(name), spec))
                    continue
                for j, member in enumerate(stage.members):
                    if _re(member).search(rest):
                        items.append((block, j, natural_key(rest), spec))
                        break
            path.extend(item[3] for item in sorted(items, key=lambda t: t[:3]))
        return path

    @staticmethod
    def _concat(prev: MatrixSpec | None, skip: MatrixSpec, spec: MatrixSpec, out: list[AlignmentPair]) -> None:
        """``spec`` reads torch.cat([hidden, skip], dim=1): hidden channels first, then the skip's."""
        kernel = tuple(spec.kernel_size or ())
        k = math.prod(kernel) if kernel else 1
        in_ch = spec.shape[1] // k
        hidden = in_ch - skip.shape[0]
        if hidden <= 0:
            if prev is not None:
                _add(out, connect(prev, spec))
            return
        if prev is not None:
            _add(out, connect(prev, spec, next_cols=(0, hidden * k), next_tag="[hidden]"))
        _add(out, connect(skip, spec, next_cols=(hidden * k, in_ch * k), next_tag="[skip]"))

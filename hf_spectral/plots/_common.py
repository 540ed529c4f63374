"""What every figure shares: a figure factory that never touches pyplot, the step axis (linear or
log), readable matrix names, thinned tick labels, and ``save_figure``."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from hf_spectral.dynamics.steps import StepScale, compact_step, is_log_spaced  # noqa: F401 (is_log_spaced: plots API)
from hf_spectral.errors import SpectralError
from hf_spectral.atomic import atomic_file

FORMATS = ("png", "svg", "pdf")

# One look for every figure. svg.fonttype "none" keeps text as text, so SVGs stay searchable.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",
    "savefig.dpi": 110,
    # never "1e-5+7.7e-1" on a nearly flat axis: ticks show the values themselves
    "axes.formatter.useoffset": False,
}
MISSING_COLOR = "#d9d9d9"  # undefined cells (flagged matrices, missing steps) in heat maps

F = TypeVar("F", bound=Callable[..., Figure])


def styled(func: F) -> F:
    """Draw ``func``'s figure under :data:`STYLE` without changing the caller's rcParams."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, unknown to pyplot: no GUI backend, nothing left open to close."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(
    fig: Figure, path_stem: str | os.PathLike, formats: Sequence[str] = ("png", "svg"), *, dpi: float | None = None
) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.<format>`` for each format (png, svg, pdf), atomically; returns the paths.
    ``dpi`` sets the PNG resolution (default 110)."""
    stem = Path(path_stem)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SpectralError(f"cannot save {stem.name} as {', '.join(unknown) or 'nothing'}; choose formats among {', '.join(FORMATS)}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with rc_context(STYLE):
        for fmt in formats:
            final = stem.with_name(f"{stem.name}.{fmt}")
            # Fixed metadata: the same figure gives the same bytes (no creation date).
            metadata = {"Date": None} if fmt == "svg" else {"CreationDate": None} if fmt == "pdf" else {}
            try:
                with atomic_file(final) as tmp:
                    fig.savefig(tmp, format=fmt, metadata=metadata, **({"dpi": dpi} if dpi else {}))
            except OSError as exc:
                raise SpectralError(f"cannot write {final}: {exc.strerror or exc}; choose a writable output folder") from exc
            written.append(final)
    return written


# ------------------------------------------------------------------------------------------------
# The step axis
# ------------------------------------------------------------------------------------------------


class StepAxis(StepScale):
    """A :class:`~hf_spectral.dynamics.steps.StepScale` that can draw itself on a matplotlib axis:
    on a log axis, ticks show the step itself at 0, 10, 100, 1k..."""

    def apply(self, ax: Axes, label: str | None = "step") -> None:
        """Label the axis (unless ``label`` is None) and, on a log axis, tick 0, 10, 100... in step units."""
        if label is not None:
            ax.set_xlabel(f"{label} (log scale)" if self.log else label)
        if not self.log:
            return
        low, high = ax.get_xlim()
        top = int(np.ceil(high)) + 1
        # Step 1 sits 0.3 from step 0: label it only when 0 is off the axis, or the labels collide.
        majors = [0.0] + [np.log10(1 + 10**k) for k in range(0 if low > 0.15 else 1, top)]
        minors = [np.log10(1 + m * 10**k) for k in range(0, top) for m in range(2, 10)]
        ax.xaxis.set_major_locator(FixedLocator([m for m in majors if low <= m <= high]))
        ax.xaxis.set_minor_locator(FixedLocator([m for m in minors if low <= m <= high]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: compact_step(round(10**v - 1))))
        ax.xaxis.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------------------------------------
# Names and labels
# ------------------------------------------------------------------------------------------------


def short_names(names: Sequence[str], max_length: int = 38) -> list[str]:
    """Readable labels: drop the prefix every name shares (``model.encoder.``) and the trailing
    ``.weight``; a name still too long gets its leading components abbreviated to their first letter
    (``bert.encoder.layer.0.attention.self.query`` → ``b.e.layer.0.attention.self.query``), and so
    in every name that starts with them, so the layer index and the module's own name stay whole. Only a
    name that still does not fit is cut, at the front (``…``)."""
    names = [str(n) for n in names]
    parts = [re.split(r"(?<=[./])", n) for n in names]
    shared = 0
    if len(names) > 1:
        for column in zip(*parts):
            if len(set(column)) != 1:
                break
            shared += 1
    pieces = []
    for split in parts:
        # Never strip a name down to nothing: keep at least its last part.
        kept = split[min(shared, len(split) - 1):]
        text = "".join(kept)
        stripped = re.sub(r"\.weight$", "", text)
        # "0.weight" (an nn.Sequential) would become a bare "0", which reads as an index: keep it whole.
        if stripped and not stripped.isdigit():
            kept = re.split(r"(?<=[./])", stripped)
        pieces.append(kept)
    # the leading components a too-long name needs abbreviated are abbreviated in every name that
    # starts with them (bert.encoder. -> b.e. everywhere; bert.embeddings. -> b.embeddings.)
    abbreviated: set[tuple[str, ...]] = set()
    for kept in pieces:
        need = 0
        while len(_abbreviated(kept, need)) > max_length and need < len(kept) - 1:
            need += 1
        abbreviated.update(tuple(kept[:d]) for d in range(1, need + 1))
    out = []
    for kept in pieces:
        count = max([d for d in range(1, len(kept)) if tuple(kept[:d]) in abbreviated], default=0)
        text = _abbreviated(kept, count)
        out.append(text if len(text) <= max_length else "…" + text[-(max_length - 1):])
    return out


def _abbreviated(components: Sequence[str], count: int) -> str:
    """The name with its first ``count`` components cut to their first letter (numbers kept whole)."""
    out = []
    for index, part in enumerate(components):
        word = part.rstrip("./")
        if index < count and word and not word.isdigit() and len(word) > 1:
            part = word[0] + part[len(word):]
        out.append(part)
    return "".join(out)


def thin_labels(ax: Axes, labels: Sequence[str], axis_inches: float, *, axis: str = "y", points_per_label: float = 9.0) -> None:
    """Label a categorical axis, showing every k-th label when they would overlap."""
    n = len(labels)
    fits = max(1, int(axis_inches * 72 / points_per_label))
    every = max(1, int(np.ceil(n / fits)))
    positions = np.arange(0, n, every)
    shown = [labels[i] for i in positions]
    if axis == "y":
        ax.set_yticks(positions, shown)
    else:
        ax.set_xticks(positions, shown, rotation=90)
    ax.tick_params(axis=axis, which="both", length=2)


def heatmap_height(rows: int, *, per_row: float = 0.16, minimum: float = 2.8, maximum: float = 14.0) -> float:
    """Figure height for a heat map with ``rows`` labelled rows: grows with them, then stops."""
    return float(np.clip(1.4 + per_row * rows, minimum, maximum))


def pick_evenly(items: Sequence[str], count: int) -> list[str]:
    """Up to ``count`` items spread evenly over the sequence (first and last included)."""
    if len(items) <= count:
        return list(items)
    index = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[i] for i in index]


def grid_shape(panels: int, columns: int = 2) -> tuple[int, int]:
    columns = min(columns, panels)
    return int(np.ceil(panels / columns)), columns


def require(condition: bool, message: str) -> None:
    """Raise the one-line SpectralError a plot gives when its table is empty or lacks a name."""
    if not condition:
        raise SpectralError(message)


# ------------------------------------------------------------------------------------------------
# Tables → grids, and grids → heat maps
# ------------------------------------------------------------------------------------------------


def pivot(table: Any, row: str, value: str, rows: Sequence[Any], steps: Sequence[float]) -> np.ndarray:
    """``table`` (long format) → array [len(rows), len(steps)] of ``value``; NaN where absent."""
    if not len(table):
        return np.full((len(rows), len(steps)), np.nan)
    values = table.assign(_v=table[value].astype(float)).groupby([row, "step"], sort=False)["_v"].mean()
    wide = values.unstack("step").reindex(index=list(rows), columns=list(steps))
    return wide.to_numpy(dtype=float)


def draw_heatmap(
    ax: Axes,
    values: np.ndarray,
    steps: Sequence[float],
    axis: StepAxis,
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """Rows × steps on the step axis (row 0 at the top); NaN cells drawn as grey gaps."""
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOR)
    data = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:  # a constant grid still needs a colour range
        vmin, vmax = vmin - 0.5 * (abs(vmin) or 1.0), vmax + 0.5 * (abs(vmax) or 1.0)
    rows = np.arange(values.shape[0] + 1) - 0.5
    mesh = ax.pcolormesh(axis.edges(steps), rows, data, cmap=colormap, vmin=vmin, vmax=vmax, shading="flat")
    ax.set_ylim(values.shape[0] - 0.5, -0.5)
    ax.grid(False)
    axis.apply(ax)
    return mesh


# A quantity whose whole range over the run is below this share of its size is drawn as flat:
# autoscaling would blow 0.77002 → 0.77003 up to the full panel height.
FLAT_SHARE = 0.01


def keep_flat_flat(ax: Axes, values: np.ndarray, share: float = FLAT_SHARE) -> bool:
    """Widen the y-axis to ±share/2 of the values' size when they vary less than that; True if it did
    (the panel's title should then say so)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return False
    low, high = float(finite.min()), float(finite.max())
    size = max(abs(low), abs(high))
    if size == 0 or high - low >= share * size:
        return False
    centre = (low + high) / 2
    ax.set_ylim(centre - share * size / 2, centre + share * size / 2)
    return True


def note(ax: Axes, text: str) -> None:
    """A small grey remark under the axes' bottom-right corner (e.g. what grey cells mean)."""
    ax.annotate(text, xy=(1.0, 0.0), xycoords="axes fraction", xytext=(0, -30), textcoords="offset points",
                ha="right", va="top", fontsize=7, color="0.35")

"""``write_report``: a ``Dynamics`` → one self-contained static HTML page (figures embedded, CSS
inline, nothing loaded from the network) plus the figure files and the per-matrix table as CSV."""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Callable, Sequence

import pandas as pd
from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.errors import SpectralError
from hf_spectral.store import atomic_file
from hf_spectral.highlights import default_metric, layer_changes, summary_lines, training_metrics

FIGURES_DIR = "figures"
LAYERS_FILE = "layers.csv"


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the page: how to draw it, and why it may be absent."""

    key: str
    title: str
    caption: str
    draw: Callable[..., Figure]
    missing: Callable[[Dynamics], str | None]


def _no_training(dyn: Dynamics, metric: str | None) -> str | None:
    if not len(dyn.training):
        return "no training log in this series: a Trainer run (trainer_state.json) or the SpectralCallback records one"
    if metric is None:
        logged = ", ".join(training_metrics(dyn)[:8])
        return f"no accuracy in the training log (logged: {logged}); choose a metric with --metric NAME"
    return None


def _no_agreement(dyn: Dynamics) -> str | None:
    if len(dyn.steps) == 1:
        return "a single snapshot has no other snapshot to compare its singular vectors with"
    if len(dyn.agreement) or len(dyn.agreement_scores):
        return None
    why = dyn.meta.get("agreement")  # the dynamics layer says why when it knows
    return why if isinstance(why, str) and why else (
        "no singular vectors were stored, so directions cannot be compared: analyze with --top-k K (e.g. 20)")


def _no_alignment(dyn: Dynamics) -> str | None:
    if len(dyn.alignment) or len(dyn.alignment_scores):
        return None
    why = dyn.meta.get("alignment")
    return why if isinstance(why, str) and why else (
        "no consecutive-layer alignment was computed: analyze with alignment (and --top-k K)")


def _no_sigma(dyn: Dynamics) -> str | None:
    return None if len(dyn.singular_values) else "the snapshots stored no singular values"


def figure_specs(metric: str | None, threshold: float) -> list[FigureSpec]:
    """The page's figures in order: the training figure first (when there is a training log)."""
    from hf_spectral import plots

    metric_text = metric or "the validation metric"
    crossing = f"dashed line: {metric_text} first ≥ {threshold:g}; " if math.isfinite(threshold) else ""
    return [
        FigureSpec("training_rank", "Training metric and effective rank",
                   f"{metric_text} (left axis) and the mean normalized effective rank (right axis, thin lines: each matrix) "
                   f"on one step axis; {crossing}shaded: the steepest fall of the mean rank.",
                   lambda d: plots.plot_training_and_rank(d, metric, threshold=threshold), lambda d: _no_training(d, metric)),
        FigureSpec("summary", "Model-level summary", "Means over all weight matrices at each snapshot.",
                   plots.plot_summary, lambda d: None),
        FigureSpec("rank_heatmap", "Effective rank, layer by layer",
                   "Normalized effective rank (Roy & Vetterli, divided by min(m, n)) of every weight matrix, in model order; "
                   "grey cells are undefined (flagged).", plots.plot_rank_heatmap, lambda d: None),
        FigureSpec("rank_lines", "Effective rank per matrix", "The same numbers as lines, coloured by depth; black: the mean.",
                   plots.plot_rank_lines, lambda d: None),
        FigureSpec("singular_values", "Singular values over time",
                   "σᵢ of a few matrices spread over depth, one line per index (dark: the largest).",
                   plots.plot_singular_values, _no_sigma),
        FigureSpec("agreement", "Agreement with the reference snapshot",
                   "Diagonal Sᵢᵢ = |uᵢᵀu′ᵢ|·|vᵢᵀv′ᵢ| against the reference (paper Eq. 5): 1 when the i-th singular "
                   "vectors point where they end up. Top vectors usually settle first.", plots.plot_agreement, _no_agreement),
        FigureSpec("agreement_scores", "Agreement score per matrix",
                   "Mean of the top-10 Sᵢᵢ of every matrix over time.", plots.plot_agreement_scores, _no_agreement),
        FigureSpec("alignment", "Alignment of consecutive layers",
                   "Diagonal Aᵢᵢ = |⟨uᵢ, v′ᵢ⟩| between a layer's output singular vectors and the next layer's input "
                   "singular vectors (paper Eqs. 3–4).", plots.plot_alignment, _no_alignment),
        FigureSpec("alignment_scores", "Alignment score per layer pair",
                   "Mean of the top-10 Aᵢᵢ of every layer pair over time.", plots.plot_alignment_scores, _no_alignment),
    ]


def write_report(
    dynamics: Dynamics,
    output_dir: str | os.PathLike,
    *,
    title: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
    metric: str | None = None,
    threshold: float = 0.9,
) -> Path:
    """Write ``index.html`` (self-contained), ``figures/*.{png,svg}`` and ``layers.csv`` to
    ``output_dir``; returns the path of ``index.html``. ``metric`` is the training metric shown
    against rank (default: the validation accuracy when logged)."""
    from hf_spectral.plots import save_figure

    formats = tuple(formats)
    if not formats:
        raise SpectralError("write_report needs at least one figure format; pass formats=('png',) or ('svg',)")
    if not dynamics.matrices:
        raise SpectralError("the dynamics have no decomposed matrices: nothing to report; check the SOURCE and --include/--exclude")
    out = Path(output_dir)
    metric = metric or default_metric(dynamics)
    sections, skipped = [], []
    for spec in figure_specs(metric, threshold):
        reason = spec.missing(dynamics)
        if reason is None:
            try:
                fig = spec.draw(dynamics)
            except SpectralError as exc:  # e.g. a table present but without the needed column
                reason = str(exc)
        if reason is not None:
            skipped.append((spec.title, reason))
            continue
        paths = save_figure(fig, out / FIGURES_DIR / spec.key, formats)
        sections.append(_figure_html(spec, paths))

    changes = layer_changes(dynamics)
    _write_atomic(out / LAYERS_FILE, changes.to_csv(index=False))
    page = _template().substitute(
        title=html.escape(title or _default_title(dynamics)),
        subtitle=html.escape(_subtitle(dynamics)),
        summary="\n".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(dynamics, metric, threshold)),
        figures="\n".join(sections),
        notes=_notes_html(skipped),
        table=_table_html(changes),
        version=html.escape(_version()),
    )
    index = out / "index.html"
    _write_atomic(index, page)
    return index


# ------------------------------------------------------------------------------------------------
# Pieces of the page
# ------------------------------------------------------------------------------------------------


def _figure_html(spec: FigureSpec, paths: list[Path]) -> str:
    by_format = {p.suffix.lstrip("."): p for p in paths}
    alt = html.escape(spec.title, quote=True)
    if "png" in by_format:
        data = base64.b64encode(by_format["png"].read_bytes()).decode("ascii")
        image = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    elif "svg" in by_format:
        svg = by_format["svg"].read_text(encoding="utf-8")
        image = svg[svg.index("<svg"):]  # inline: drop the XML prolog and doctype
    else:  # pdf only: nothing a browser shows inline
        image = f'<p class="notes">Saved as {html.escape(", ".join(p.name for p in paths))} in {FIGURES_DIR}/.</p>'
    return (f'<figure id="{spec.key}">\n<h3>{html.escape(spec.title)}</h3>\n'
            f"<figcaption>{html.escape(spec.caption)}</figcaption>\n{image}\n</figure>")


def _notes_html(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    items = "\n".join(f"<li><b>{html.escape(t)}</b>: {html.escape(r)}.</li>" for t, r in skipped)
    return f'<div class="notes"><p>Not shown:</p>\n<ul>\n{items}\n</ul></div>'


TABLE_COLUMNS = [
    ("matrix", "matrix"), ("kind", "kind"), ("shape", "shape"),
    ("erank_first", "erank/R first"), ("erank_last", "erank/R last"), ("erank_change", "Δ erank/R"),
    ("srank_first", "srank/R first"), ("srank_last", "srank/R last"),
    ("sigma_max_first", "σ₁ first"), ("sigma_max_last", "σ₁ last"),
    ("agreement_first", "agreement (first)"), ("settled_step", "settled at step"), ("flags", "flags"),
]


def _table_html(changes: pd.DataFrame) -> str:
    head = "".join(f'<th class="{"name" if key == "matrix" else ""}">{html.escape(label)}</th>' for key, label in TABLE_COLUMNS)
    rows = []
    for record in changes.to_dict("records"):
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = record.get(key)
            css = "name" if key == "matrix" else ""
            if key == "erank_change" and isinstance(value, float) and not math.isnan(value):
                css = "down" if value < 0 else "up" if value > 0 else ""
            cells.append(f'<td class="{css}">{html.escape(_cell(key, value))}</td>')
        row_class = ' class="flagged"' if record.get("flagged") else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _cell(key: str, value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key == "settled_step":
        return f"{int(value):,}"
    if key == "erank_change":
        return f"{value:+.4f}"
    if isinstance(value, float):
        return f"{value:.4g}" if key.startswith("sigma") else f"{value:.4f}"
    return str(value)


def _default_title(dyn: Dynamics) -> str:
    name = dyn.source_name
    return f"Spectral dynamics of {name}" if name else "Spectral dynamics of weights"


def _subtitle(dyn: Dynamics) -> str:
    steps = dyn.steps
    parts = []
    if dyn.meta.get("source"):
        parts.append(f"source {dyn.meta['source']}")
    if steps:
        parts.append(f"{len(steps)} snapshot{'s' if len(steps) != 1 else ''}, steps {steps[0]:,}–{steps[-1]:,}" if len(steps) > 1
                     else f"1 snapshot at step {steps[0]:,}")
    parts.append(f"{len(dyn.matrices)} weight matrices")
    reference = dyn.meta.get("reference")
    if reference:
        parts.append(f"agreement reference: {reference}")
    return " · ".join(parts)


def _template() -> Template:
    return Template(resources.files("hf_spectral").joinpath("templates/report.html").read_text(encoding="utf-8"))


def _version() -> str:
    from hf_spectral import __version__

    return __version__


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SpectralError(f"cannot write {path}: {exc.strerror or exc}; choose a writable --output folder") from exc

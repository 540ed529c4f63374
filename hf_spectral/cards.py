"""``update_model_card``: add or replace a "Spectral analysis" section in a Hugging Face model card
(``huggingface_hub.ModelCard``), with a summary table, key figures and ``hf-spectral`` tags.

The section sits between two HTML comments (invisible on the Hub), so re-running replaces it
instead of appending a second one. Templates live in ``model_cards/``: ``template.md`` for a new
card, ``spectral_section.md`` for the section.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.errors import SpectralError
from hf_spectral.store import atomic_file
from hf_spectral.highlights import default_metric, mean_erank, metric_series, summary_lines

START = "<!-- hf-spectral:start -->"
END = "<!-- hf-spectral:end -->"
TAGS = ("hf-spectral", "spectral-analysis")
IMAGES_DIR = "spectral_plots"
TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
MAX_TABLE_ROWS = 8


def update_model_card(
    card: str | os.PathLike | ModelCard,
    dynamics: Dynamics,
    *,
    images_dir: str | os.PathLike | None = None,
    repo_relative_images: bool = True,
    metric: str | None = None,
    threshold: float = 0.9,
) -> ModelCard:
    """Add or replace the "Spectral analysis" section of ``card`` and tag its metadata.

    ``card`` is a path (created from ``model_cards/template.md`` when missing, saved back) or a
    ``ModelCard`` (changed in place, not saved). Figures are written as PNG to ``images_dir``
    (default: ``spectral_plots/`` next to the card; a ModelCard object gets figures only when
    ``images_dir`` is given) and linked relative to the card's folder — the repository root for a
    README.md — or by absolute path when ``repo_relative_images`` is False. Returns the card.
    """
    path = None if isinstance(card, ModelCard) else Path(card)
    if path is None:
        model_card = card
    elif path.is_file():
        try:
            model_card = ModelCard.load(path)
        except ValueError as exc:  # metadata block that is not a mapping
            raise SpectralError(f"cannot read model card {path}: {exc}; fix its YAML header") from exc
    elif path.exists():
        raise SpectralError(f"model card {path} is not a file; pass the card's path, e.g. {path / 'README.md'}")
    else:
        model_card = new_card(dynamics)

    if images_dir is None and path is not None:
        images_dir = path.parent / IMAGES_DIR
    card_dir = path.parent if path is not None else Path(images_dir).parent if images_dir is not None else Path.cwd()
    metric = metric or default_metric(dynamics)
    images, missing = ([], []) if images_dir is None else _write_images(dynamics, Path(images_dir), card_dir, repo_relative_images, metric, threshold)
    section = render_section(dynamics, images, missing, metric, threshold)
    model_card.text = replace_section(model_card.text, section, where=str(path or "the model card"))
    tags = list(model_card.data.tags or [])
    model_card.data.tags = tags + [tag for tag in TAGS if tag not in tags]
    if path is not None:
        _save_atomic(model_card, path)
    return model_card


def new_card(dynamics: Dynamics, **fields: str) -> ModelCard:
    """A fresh card from ``model_cards/template.md`` with an empty spectral section to fill;
    ``fields`` fill the template's other slots (model_name, model_summary, training_details, ...)."""
    fields.setdefault("model_name", dynamics.source_name or "Model card")
    return ModelCard.from_template(ModelCardData(tags=list(TAGS)), template_path=str(_template_path("template.md")), **fields)


def replace_section(text: str, section: str, *, where: str = "the model card") -> str:
    """``text`` with the marked section replaced by ``section`` (appended when there is none)."""
    newline = "\r\n" if "\r\n" in text else "\n"
    block = f"{START}{newline}{section.strip()}{newline}{END}".replace("\r\n", "\n").replace("\n", newline)
    starts, ends = text.count(START), text.count(END)
    if starts == ends == 0:
        return text.rstrip() + newline * 2 + block + newline
    first, last = text.find(START), text.find(END)
    if starts != 1 or ends != 1 or last < first:
        raise SpectralError(
            f"{where} has {starts} '{START}' and {ends} '{END}' markers; keep exactly one pair, in that order (or none), and run again"
        )
    return text[:first] + block + text[last + len(END):]


def render_section(dynamics: Dynamics, images: list[dict[str, str]], missing: list[str], metric: str | None, threshold: float) -> str:
    """The section's Markdown (without markers), from ``model_cards/spectral_section.md``."""
    from hf_spectral import __version__

    steps = dynamics.steps
    span = f"{len(steps)} snapshots (steps {steps[0]:,}–{steps[-1]:,})" if len(steps) > 1 else f"one snapshot (step {steps[0]:,})" if steps else "no snapshot"
    intro = (f"Singular values of every weight matrix ({len(dynamics.matrices)} matrices) across {span}, computed with hf-spectral "
             "following Yunis et al., *Approaching Deep Learning through the Spectral Dynamics of Weights* "
             "([arXiv:2408.11804](https://arxiv.org/abs/2408.11804)). Effective rank is the normalized "
             "Roy–Vetterli effective rank (1 = all singular values equal).")
    template = jinja2.Environment(keep_trailing_newline=True, autoescape=False).from_string(_template_path("spectral_section.md").read_text(encoding="utf-8"))
    return template.render(
        intro=intro, highlights=[_md(line) for line in summary_lines(dynamics, metric, threshold)],
        table=summary_table(dynamics, metric), images=images, missing=[_md(m) for m in missing], version=__version__,
    )


def summary_table(dynamics: Dynamics, metric: str | None = None, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A Markdown table of model-level means at up to ``max_rows`` snapshots (first and last included)."""
    summary = dynamics.summary.sort_values("step")
    if not len(summary):
        return ""
    if len(summary) > max_rows:
        keep = sorted({round(i * (len(summary) - 1) / (max_rows - 1)) for i in range(max_rows)})
        summary = summary.iloc[keep]
    erank = mean_erank(dynamics)
    columns: list[tuple[str, Any]] = [
        ("step", lambda r: f"{int(r['step']):,}"),
        ("mean erank/R", lambda r: _fmt(erank.get(r["step"], math.nan))),
    ]
    for column, header in (("mean_normalized_stable_rank", "mean srank/R"), ("mean_spectral_norm", "mean σ₁"),
                           ("mean_agreement", "mean agreement"), ("mean_alignment", "mean alignment")):
        if column in summary and summary[column].notna().any():
            columns.append((header, lambda r, c=column: _fmt(r[c])))
    if metric:
        values = metric_series(dynamics, metric)
        if len(values):
            # the last logged value at or before each snapshot
            columns.append((metric, lambda r: _fmt(values[values.index <= r["step"]].iloc[-1]) if (values.index <= r["step"]).any() else "—"))
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join(f(row) for _, f in columns) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


CARD_FIGURES = (
    ("training_rank", "Training metric and effective rank", "{metric} and the mean normalized effective rank over training; "
     "{crossing}shaded: the steepest fall of the mean rank."),
    ("rank_heatmap", "Effective rank per weight matrix", "Normalized effective rank of every weight matrix (model order) over training."),
    ("summary", "Model-level summary", "Means over all weight matrices at each snapshot."),
    ("singular_values", "Singular values over training", "σᵢ of a few matrices spread over depth, one line per index."),
)


def _write_images(dyn: Dynamics, folder: Path, card_dir: Path, relative: bool, metric: str | None, threshold: float
                  ) -> tuple[list[dict[str, str]], list[str]]:
    from hf_spectral import plots

    draw = {
        "training_rank": lambda: plots.plot_training_and_rank(dyn, metric, threshold=threshold),
        "rank_heatmap": lambda: plots.plot_rank_heatmap(dyn),
        "summary": lambda: plots.plot_summary(dyn),
        "singular_values": lambda: plots.plot_singular_values(dyn),
    }
    # threshold=math.inf: a metric without a target (a loss, a perplexity), no crossing to mark
    crossing = f"dashed: {metric} first ≥ {threshold:g}; " if math.isfinite(threshold) else ""
    images, missing = [], []
    for key, alt, caption in CARD_FIGURES:
        if key == "training_rank" and (not len(dyn.training) or metric is None):
            missing.append("the training-metric figure (" + ("no accuracy in the training log; pass metric=" if len(dyn.training)
                           else "no training log in this series") + ")")
            continue
        try:
            png = plots.save_figure(draw[key](), folder / key, ("png",))[0]
        except SpectralError as exc:
            missing.append(f"{alt.lower()} ({exc})")
            continue
        link = Path(os.path.relpath(png, card_dir)).as_posix() if relative else png.resolve().as_posix()
        images.append({"alt": alt, "path": link.replace(" ", "%20"),
                       "caption": _md(caption.format(metric=metric or "", crossing=crossing))})
    return images, missing


def _template_path(name: str) -> Path:
    path = TEMPLATES / name
    if not path.is_file():
        raise SpectralError(f"model card template {path} is missing; reinstall hf-spectral from its source tree (pip install -e .)")
    return path


def _save_atomic(card: ModelCard, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            card.save(tmp)
    except OSError as exc:
        raise SpectralError(f"cannot write model card {path}: {exc.strerror or exc}; choose a writable --model-card path") from exc


def _md(text: str) -> str:
    """Plain text made safe inside Markdown: no raw HTML, no table breaks."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _fmt(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(value) else f"{value:.4g}"

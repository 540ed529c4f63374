"""Figures of a ``Dynamics``: each function returns a matplotlib Figure drawn on the Agg canvas
(pyplot is never touched, so nothing is shown and nothing stays open); ``save_figure`` writes it.

Figure families, one module each: ``spectra`` (σᵢ over time), ``rank`` (effective rank heat map
and lines), ``agreement``, ``alignment``, ``summary`` (model-level panel), ``training`` (a
training metric and the mean rank on one axis, with key events marked), ``heavy_tail``
(weightwatcher's α per matrix over time, with its 2–6 band, beside the effective rank), ``lmc``
(linear mode connectivity: barrier and endpoint agreement per split step, the η sweep).
"""

from hf_spectral.highlights import key_events
from hf_spectral.plots._common import StepAxis, is_log_spaced, save_figure, short_names
from hf_spectral.plots.agreement import plot_agreement, plot_agreement_scores
from hf_spectral.plots.alignment import plot_alignment, plot_alignment_scores
from hf_spectral.plots.heavy_tail import plot_alpha
from hf_spectral.plots.lmc import plot_lmc
from hf_spectral.plots.rank import plot_rank_heatmap, plot_rank_lines
from hf_spectral.plots.spectra import plot_singular_values
from hf_spectral.plots.summary import plot_summary
from hf_spectral.plots.training import plot_training_and_rank

__all__ = [
    "StepAxis",
    "is_log_spaced",
    "key_events",
    "plot_agreement",
    "plot_alpha",
    "plot_agreement_scores",
    "plot_alignment",
    "plot_alignment_scores",
    "plot_lmc",
    "plot_rank_heatmap",
    "plot_rank_lines",
    "plot_singular_values",
    "plot_summary",
    "plot_training_and_rank",
    "save_figure",
    "short_names",
]

"""hf_spectral: the spectral dynamics of weights (singular values and vectors of every weight
matrix) for the HuggingFace ecosystem.

The public API is what this module names; everything else may change. Names load lazily so that
``import hf_spectral`` stays cheap (the callback needs transformers, the plots need matplotlib).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports
from hf_spectral._version import __version__


_PUBLIC = {
    # analyzer
    "analyze": "hf_spectral.analyzer",
    "analyze_series": "hf_spectral.analyzer",
    "AnalysisOptions": "hf_spectral.engine",
    "analyze_model": "hf_spectral.engine",
    "estimate": "hf_spectral.dry_run",
    "fourier_sparsity": "hf_spectral.metrics.fourier",
    # snapshots
    "Snapshot": "hf_spectral.store",
    "read_snapshot": "hf_spectral.store",
    "write_snapshot": "hf_spectral.store",
    # tracking
    "SpectralCallback": "hf_spectral.tracking",
    "SpectralTracker": "hf_spectral.tracking",
    # dynamics
    "Dynamics": "hf_spectral.dynamics",
    "compute_dynamics": "hf_spectral.dynamics",
    "dynamics_from_source": "hf_spectral.series",
    "load_series": "hf_spectral.series",
    "save_dynamics": "hf_spectral.dynamics",
    "load_dynamics": "hf_spectral.dynamics",
    "compare": "hf_spectral.comparison",
    "Comparison": "hf_spectral.dynamics",
    # your own architectures
    "register_architecture": "hf_spectral.views.registry",
    "TransformerPairing": "hf_spectral.views.pairs",
    "SequentialPairing": "hf_spectral.views.pairs",
    "ConvPathPairing": "hf_spectral.views.pairs",
    "PathStage": "hf_spectral.views.pairs",
    # faces
    "write_report": "hf_spectral.report",
    "key_events": "hf_spectral.highlights",
    "update_model_card": "hf_spectral.cards",
    # recipe support (what the recipes in recipes/ share)
    "ConsoleCallback": "hf_spectral.recipe_support.console",
    "attach_console": "hf_spectral.recipe_support.console",
    "SpectralArguments": "hf_spectral.recipe_support.arguments",
    "ExperimentArguments": "hf_spectral.recipe_support.branching",
    "parse_recipe_args": "hf_spectral.recipe_support.arguments",
    "console_line": "hf_spectral.recipe_support.console",
    "FullBatch": "hf_spectral.recipe_support.data",
    "full_batch_collate": "hf_spectral.recipe_support.data",
    "digits_splits": "hf_spectral.recipe_support.data",
    "accuracy_metrics": "hf_spectral.recipe_support.metrics",
    "causal_lm_metrics": "hf_spectral.recipe_support.metrics",
    "causal_lm_scores": "hf_spectral.recipe_support.metrics",
    "perplexity": "hf_spectral.recipe_support.metrics",
    "Crossing": "hf_spectral.recipe_support.summary",
    "RunSummary": "hf_spectral.recipe_support.summary",
    "finish_run": "hf_spectral.recipe_support.summary",
    "set_cpu_threads": "hf_spectral.recipe_support.threads",
    "run_main": "hf_spectral.recipe_support.entry",
    # recipe support: speech
    "character_error_rate": "hf_spectral.recipe_support.speech",
    "word_error_rate": "hf_spectral.recipe_support.speech",
    "ctc_greedy_ids": "hf_spectral.recipe_support.speech",
    "ctc_metrics": "hf_spectral.recipe_support.speech",
    "ctc_argmax": "hf_spectral.recipe_support.speech",
    "spoken_digits": "hf_spectral.recipe_support.spoken_digits",
    "SpokenDigits": "hf_spectral.recipe_support.spoken_digits",
    "resample_audio": "hf_spectral.recipe_support.spoken_digits",
    "espeak_available": "hf_spectral.recipe_support.spoken_digits",
    # errors
    "SpectralError": "hf_spectral.errors",
    # experiments (a subpackage: hf_spectral.experiments.permute_labels, ...)
    "experiments": "hf_spectral.experiments",
    # figures (a subpackage: hf_spectral.plots.plot_lmc, hf_spectral.plots.save_figure, ...)
    "plots": "hf_spectral.plots",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.analyzer import analyze, analyze_series
    from hf_spectral.cards import update_model_card
    from hf_spectral.comparison import compare
    from hf_spectral.dynamics import Comparison, Dynamics, compute_dynamics, load_dynamics, save_dynamics
    from hf_spectral.dry_run import estimate
    from hf_spectral.engine import AnalysisOptions, analyze_model
    from hf_spectral import experiments, plots
    from hf_spectral.errors import SpectralError
    from hf_spectral.highlights import key_events
    from hf_spectral.metrics.fourier import fourier_sparsity
    from hf_spectral.recipe_support.arguments import SpectralArguments, parse_recipe_args
    from hf_spectral.recipe_support.branching import ExperimentArguments
    from hf_spectral.recipe_support.console import ConsoleCallback, attach_console, console_line
    from hf_spectral.recipe_support.data import FullBatch, full_batch_collate
    from hf_spectral.recipe_support.entry import run_main
    from hf_spectral.recipe_support.metrics import accuracy_metrics, causal_lm_metrics, causal_lm_scores, perplexity
    from hf_spectral.recipe_support.summary import Crossing, RunSummary, finish_run
    from hf_spectral.recipe_support.speech import (
        character_error_rate,
        ctc_argmax,
        ctc_greedy_ids,
        ctc_metrics,
        word_error_rate,
    )
    from hf_spectral.recipe_support.spoken_digits import SpokenDigits, espeak_available, resample_audio, spoken_digits
    from hf_spectral.report import write_report
    from hf_spectral.series import dynamics_from_source, load_series
    from hf_spectral.store import Snapshot, read_snapshot, write_snapshot
    from hf_spectral.tracking import SpectralCallback, SpectralTracker
    from hf_spectral.views.pairs import ConvPathPairing, PathStage, SequentialPairing, TransformerPairing
    from hf_spectral.views.registry import register_architecture

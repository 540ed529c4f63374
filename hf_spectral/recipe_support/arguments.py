"""Command-line arguments shared by the recipes: ``HfArgumentParser`` with presets that set the
defaults (explicit flags win), and the spectral tracking/report flags every recipe has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from hf_spectral.errors import SpectralError
from hf_spectral.recipe_support.branching import ExperimentArguments


@dataclass
class SpectralArguments:
    """``--track_spectra``, the snapshot schedule and the report's model-card copy."""

    track_spectra: bool = field(default=True, metadata={"help": "Snapshot the spectra during training (SpectralCallback)."})
    spectra_schedule: str = field(default="log", metadata={
        "help": '"log" (step 0, log-spaced dense early steps, 10 even ones, the last), N (every N steps), "a,b,c", '
                'or "paper" (the authors\' checkpoints: init, 4 evenly spaced inside epoch 1, then every epoch).'})
    spectra_top_k: int = field(default=10, metadata={"help": "Singular vectors kept per matrix (agreement, alignment)."})
    spectra_alignment: bool = field(default=False, metadata={"help": "Also store consecutive-layer alignment."})
    # Off in recipes: their schedule is the experiment (the paper's x-axes need every early snapshot).
    spectra_max_overhead: float | None = field(default=None, metadata={
        "help": "Skip scheduled snapshots beyond this share of the training time (e.g. 0.05; default: take all)."})
    spectra_background: str = field(default="auto", metadata={
        "help": "Compute snapshots in a worker thread while training goes on: auto (where it is safe and a core "
                "is idle), on or off (docs/tracking.md, 'Snapshots in the background')."})
    model_card_copy: str | None = field(default=None, metadata={
        "help": "Also write the model card (with its figures beside it) here, e.g. model_cards/<recipe>.md."})

    def callbacks(self, *, steps_per_epoch: int | None = None, epochs: int | None = None, **options: Any) -> list[TrainerCallback]:
        """``[SpectralCallback(...)]`` with these flags (``options`` add to or override them), or ``[]``
        with ``--track_spectra false``. The "paper" schedule needs ``steps_per_epoch`` and ``epochs``."""
        if not self.track_spectra:
            return []
        from hf_spectral.tracking import SpectralCallback

        schedule: Any = self.spectra_schedule
        if schedule.strip().lower() == "paper":
            if not steps_per_epoch or not epochs:
                raise SpectralError("--spectra_schedule paper needs whole epochs: pass --num_train_epochs (and no --max_steps)")
            schedule = paper_schedule(steps_per_epoch, epochs)
        settings = {"schedule": schedule, "top_k": self.spectra_top_k, "alignment": self.spectra_alignment,
                    "max_overhead": self.spectra_max_overhead, "background": self.spectra_background}
        return [SpectralCallback(**{**settings, **options})]


def paper_schedule(steps_per_epoch: int, epochs: int) -> list[int]:
    """The authors' checkpoint steps (docs/definitions.md §7): the initialization, 4 evenly spaced inside
    the first epoch, then the end of every epoch."""
    inside = [round(steps_per_epoch * i / 5) for i in range(1, 5)]
    return sorted({0, *inside, *(steps_per_epoch * e for e in range(1, epochs + 1))})


def parse_recipe_args(
    types: Sequence[type],
    argv: Sequence[str] | None = None,
    *,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    preset_field: str = "model_preset",
    defaults: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
) -> tuple[Any, ...]:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into instances of the dataclasses ``types``
    (``TrainingArguments`` among them) with ``HfArgumentParser``. Defaults, lowest first: the
    dataclasses', ``defaults`` (the recipe's choices), ``presets[<--preset_field>]``; explicit flags
    win over all. ``output_dir``: when ``--output_dir`` is not given, this template filled from the
    parsed flags (``"runs/gpt2_lm_{model_preset}_seed{seed}"``). An :class:`ExperimentArguments` among
    ``types`` is checked against the ``TrainingArguments`` (``ExperimentArguments.configure``)."""
    parser = HfArgumentParser(tuple(types))
    flags = {action.dest for action in parser._actions}
    unknown = sorted({key for table in [defaults or {}, *(presets or {}).values()] for key in table} - flags)
    if unknown:  # a typo in a recipe's table would otherwise come back as an extra Namespace
        raise SpectralError(f"recipe defaults/presets name {unknown}, which are no flags of {[t.__name__ for t in types]}")
    parser.set_defaults(**(defaults or {}))
    argv = list(argv) if argv is not None else None
    known, _ = parser.parse_known_args(argv)  # first pass: which preset, which seed
    if presets is not None:
        name = getattr(known, preset_field)
        if name not in presets:
            raise SpectralError(f"--{preset_field} {name!r}: choose one of {sorted(presets)}")
        parser.set_defaults(**presets[name])
        known, _ = parser.parse_known_args(argv)
    if output_dir is not None and getattr(known, "output_dir", None) is None:
        parser.set_defaults(output_dir=output_dir.format(**vars(known)))
    parsed = tuple(parser.parse_args_into_dataclasses(args=argv))
    training = next((item for item in parsed if isinstance(item, TrainingArguments)), None)
    for item in parsed:
        if isinstance(item, ExperimentArguments) and training is not None:
            item.configure(training)  # --branch_from's data seed must be set before the Trainer is made
    return parsed

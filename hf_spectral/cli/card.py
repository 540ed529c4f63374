"""``hf-spectral card``: add or update the "Spectral analysis" section of a model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_spectral.cli.common import add_series_arguments, is_main_process, load_dynamics_for, print_notes
from hf_spectral.errors import SpectralError


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "card", help="add or update the spectral-analysis section of a model card",
        description="Analyze SOURCE (or read saved dynamics) and write a 'Spectral analysis' section, figures and "
        "hf-spectral tags into a model card (huggingface_hub.ModelCard). Re-running replaces the section.",
    )
    add_series_arguments(parser, figures=True)
    parser.add_argument("--model-card", type=Path, metavar="PATH",
                        help="card to create or update (default: SOURCE/README.md when SOURCE is a local folder)")
    parser.add_argument("--images-dir", type=Path, metavar="DIR", help="where the figures go (default: spectral_plots/ next to the card)")
    parser.add_argument("--absolute-image-paths", action="store_true", help="link figures by absolute path instead of relative to the card")
    parser.set_defaults(run=run_card)


def run_card(args: argparse.Namespace) -> int:
    from hf_spectral.cards import check_card_output, update_model_card

    card = args.model_card
    if card is None:
        if len(args.sources) != 1 or not Path(args.sources[0]).is_dir():
            raise SpectralError(f"{' '.join(args.sources)} is not one local folder; pass --model-card PATH for the card to write")
        card = Path(args.sources[0]) / "README.md"
    if is_main_process():
        check_card_output(card, args.images_dir)  # before the analysis, not after it
    dynamics = load_dynamics_for(args)
    if not is_main_process():
        return 0
    print_notes(dynamics)
    update_model_card(card, dynamics, images_dir=args.images_dir, repo_relative_images=not args.absolute_image_paths,
                      metric=args.metric, threshold=args.threshold)
    print(f"spectral analysis section written to {card}")
    return 0

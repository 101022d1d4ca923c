"""A trained model going live: its card, calibration and content check written in the work
folder, then the folder put in place of the previous model in one rename.

Training and ensembling both end here, so that neither can put a model in service without
its calibration or content check: fitted after the rename, a fit that failed left one that
refused nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.model_store import ModelCard, read_card
from training.calibration import calibrate
from training.content_check import record_content_check
from training.data import LoadedImages
from training.model_folder import publish, write_card


def ship(
    workdir: Path,
    output: Path,
    card: ModelCard,
    model: Any,
    images: tuple[LoadedImages, LoadedImages],
    command: str,
    calibration_copies: int,
) -> ModelCard:
    """`images` are the split's training and validation images, decoded; returns the card
    as shipped, calibrated."""
    train, validation = images
    write_card(workdir, card)
    calibrate(workdir, model, validation, command, calibration_copies)
    record_content_check(workdir, train, validation, command)
    publish(workdir, output)
    return read_card(output)

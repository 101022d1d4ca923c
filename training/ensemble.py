"""Averaging several trained models into one shipped model.

Members trained from different seeds disagree most on unfamiliar images, so their average
is steadier under the shifts a new department brings than any one of them. Members must
share their validation patients (the split seed is fixed in config.toml) so that the
ensemble's threshold is chosen, like every other, on patients none of them trained on.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras

from core.model_store import (
    MODEL_FILE,
    ModelCard,
    ModelError,
    model_dir,
    positive_probabilities,
    read_card,
)
from training.calibration import augmentation_of
from training.data import CLASSES, load_images
from training.machine import device
from training.metrics import evaluate_predictions
from training.model_folder import created_now, new_workdir, operating_point, version_of
from training.shipping import ship
from training.split import SPLIT_FILE, read_split

log = logging.getLogger(__name__)


def member_layer(index: int) -> str:
    """The name of the `index`-th member (from 0, in the card's order) inside the model."""
    return f"member_{index + 1}"


class EnsembleError(Exception):
    """The members cannot be averaged; the message says why."""


@dataclass(frozen=True)
class EnsembleRequest:
    members: tuple[str, ...]
    models_directory: Path
    data: Path
    output: Path
    target_sensitivity: float
    command: str
    calibration_copies: int


def _members(request: EnsembleRequest) -> list[tuple[Path, ModelCard]]:
    folders = [model_dir(request.models_directory, name) for name in request.members]
    members = [(folder, read_card(folder)) for folder in folders]
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two members")
    splits = {(folder / SPLIT_FILE).read_bytes() for folder, _ in members}
    if len(splits) != 1:
        raise EnsembleError("members were validated on different patients (split.csv differs)")
    sizes = {card.input_size for _, card in members}
    classes = {card.classes for _, card in members}
    if len(sizes) != 1 or len(classes) != 1:
        raise EnsembleError("members differ in input size or classes")
    for folder, card in members:
        # Read before any member is loaded: the calibration needs them at the very end.
        try:
            augmentation_of(card)
        except ModelError as exc:
            raise EnsembleError(f"{folder.name}: {exc}") from None
    return members


def build_ensemble(request: EnsembleRequest) -> ModelCard:
    members = _members(request)
    size = members[0][1].input_size
    inputs = keras.Input((size, size, 1), name="image")
    outputs = []
    for index, (folder, _) in enumerate(members):
        member = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        member.name = member_layer(index)
        outputs.append(member(inputs))
    model = keras.Model(inputs, keras.layers.Average(name="classes")(outputs), name="ensemble")

    validation = load_images(
        read_split(members[0][0] / SPLIT_FILE, request.data, "validation"), size
    )
    probabilities = positive_probabilities(model, validation.pixels, CLASSES.index("PNEUMONIA"))
    threshold, rule = operating_point(
        validation.labels, probabilities, request.target_sensitivity, None
    )
    figures = evaluate_predictions(validation.labels, probabilities, threshold)

    output = request.output.resolve()
    workdir = new_workdir(output)
    model.save(workdir / MODEL_FILE)
    shutil.copyfile(members[0][0] / SPLIT_FILE, workdir / SPLIT_FILE)
    architectures = sorted({card.architecture for _, card in members})
    card = ModelCard(
        name=output.name,
        version=version_of(workdir),
        architecture="+".join(architectures),
        input_size=size,
        threshold=threshold,
        classes=CLASSES,
        positive_class="PNEUMONIA",
        description=f"average of {len(members)} {'/'.join(architectures)} models",
        threshold_rule=rule,
        command=request.command,
        created_at=created_now(),
        training={
            "data": str(request.data),
            "split_file": SPLIT_FILE,
            "validation_images": len(validation.samples),
            "validation_patients": len(set(validation.patients)),
            "members": [
                {
                    "name": card.name,
                    "version": card.version,
                    "architecture": card.architecture,
                    "command": card.command,
                    "threshold": card.threshold,
                    "validation": card.validation,
                    "training": card.training,
                }
                for _, card in members
            ],
            "assembled_on": device(),
            "keras": keras.__version__,
            "parameters": model.count_params(),
        },
        validation=figures,
    )
    train = load_images(read_split(workdir / SPLIT_FILE, request.data, "train"), size)
    card = ship(
        workdir,
        output,
        card,
        model,
        (train, validation),
        request.command,
        request.calibration_copies,
    )
    log.info(
        "saved %s: validation accuracy %.3f, AUC %.4f, sensitivity %.3f, specificity %.3f "
        "at threshold %.3f, ECE %.3f calibrated",
        output,
        figures["accuracy"],
        figures["auc"],
        figures["sensitivity"],
        figures["specificity"],
        card.threshold,
        card.validation["ece"],
    )
    return card

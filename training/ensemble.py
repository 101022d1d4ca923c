"""Averaging several trained models into one shipped model.

Members trained from different seeds disagree most on unfamiliar images, so their average
is steadier under the shifts a new department brings than any one of them. Members must
share their validation patients (the split seed is fixed in config.toml) so that the
ensemble's threshold is chosen, like every other, on patients none of them trained on.
"""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True)
class _Member:
    """One model to average: a trained model's folder, or a member inside an ensemble's
    (`path`, the member indices from the outermost), so that an ensemble can be grown by
    naming it beside the new models instead of retraining the members it already has."""

    folder: Path
    card: ModelCard
    path: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return self.folder.name if not self.path else f"{self.folder.name} / {self.card.name}"

    def taken_from(self, model: keras.Model) -> keras.Model:
        for index in self.path:
            model = model.get_layer(member_layer(index))
        return model


def _unpacked(folder: Path, card: ModelCard, path: tuple[int, ...] = ()) -> list[_Member]:
    """An ensemble's members, at any depth, with the cards it recorded for them: averaging an
    average with new models would weigh its members less than the new ones."""
    entries = card.training.get("members", [])
    if not entries:
        return [_Member(folder, card, path)]
    try:
        cards = [
            ModelCard(
                name=entry["name"],
                version=entry["version"],
                architecture=entry["architecture"],
                input_size=card.input_size,
                threshold=entry["threshold"],
                classes=card.classes,
                positive_class=card.positive_class,
                command=entry["command"],
                training=entry["training"],
                validation=entry["validation"],
            )
            for entry in entries
        ]
    except (KeyError, TypeError) as exc:
        raise EnsembleError(f"{folder.name} records a member without its {exc}") from None
    return [
        member
        for index, inner in enumerate(cards)
        for member in _unpacked(folder, inner, (*path, index))
    ]


def _named_once(members: list[_Member], key: str, values: list[str]) -> None:
    seen: dict[str, _Member] = {}
    for member, value in zip(members, values, strict=True):
        if value in seen:
            first = seen[value].label
            who = (
                f"{first} is named twice"
                if first == member.label
                else f"{member.label} and {first} are the same {key}"
            )
            raise EnsembleError(
                f"{who}: one model, on its own or inside an ensemble, would weigh twice in the"
                " average"
            )
        seen[value] = member


def _members(request: EnsembleRequest) -> list[_Member]:
    if len(request.members) < 2:
        raise EnsembleError("an ensemble needs at least two members")
    folders = [model_dir(request.models_directory, name) for name in request.members]
    members = [m for folder in folders for m in _unpacked(folder, read_card(folder))]
    _named_once(members, "model name", [m.card.name for m in members])
    _named_once(members, "model version", [m.card.version for m in members])
    splits = {(m.folder / SPLIT_FILE).read_bytes() for m in members}
    if len(splits) != 1:
        raise EnsembleError("members were validated on different patients (split.csv differs)")
    sizes = {m.card.input_size for m in members}
    classes = {m.card.classes for m in members}
    if len(sizes) != 1 or len(classes) != 1:
        raise EnsembleError("members differ in input size or classes")
    for member in members:
        # Read before any member is loaded: the calibration needs them at the very end.
        try:
            augmentation_of(member.card)
        except ModelError as exc:
            raise EnsembleError(f"{member.label}: {exc}") from None
    return members


def _loaded(members: list[_Member]) -> list[keras.Model]:
    """Each folder read once, however many members it holds. Weights are compared as well
    as names and versions: recalibrating a model gives it a new version, not new weights."""
    files = {
        folder: keras.saving.load_model(folder / MODEL_FILE, compile=False)
        for folder in dict.fromkeys(m.folder for m in members)
    }
    models = [m.taken_from(files[m.folder]) for m in members]
    digests = [
        hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
        for model in models
    ]
    _named_once(members, "weights", digests)
    return models


def build_ensemble(request: EnsembleRequest) -> ModelCard:
    members = _members(request)
    size = members[0].card.input_size
    inputs = keras.Input((size, size, 1), name="image")
    outputs = []
    for index, model in enumerate(_loaded(members)):
        model.name = member_layer(index)
        outputs.append(model(inputs))
    model = keras.Model(inputs, keras.layers.Average(name="classes")(outputs), name="ensemble")

    validation = load_images(
        read_split(members[0].folder / SPLIT_FILE, request.data, "validation"), size
    )
    probabilities = positive_probabilities(model, validation.pixels, CLASSES.index("PNEUMONIA"))
    threshold, rule = operating_point(
        validation.labels, probabilities, request.target_sensitivity, None
    )
    figures = evaluate_predictions(validation.labels, probabilities, threshold)

    output = request.output.resolve()
    workdir = new_workdir(output)
    model.save(workdir / MODEL_FILE)
    shutil.copyfile(members[0].folder / SPLIT_FILE, workdir / SPLIT_FILE)
    architectures = sorted({m.card.architecture for m in members})
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
                    "name": m.card.name,
                    "version": m.card.version,
                    "architecture": m.card.architecture,
                    "command": m.card.command,
                    "threshold": m.card.threshold,
                    "validation": m.card.validation,
                    "training": m.card.training,
                }
                for m in members
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

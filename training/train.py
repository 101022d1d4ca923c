"""One training run: data, patient split, balancing, fit, threshold, model card.

Everything a later reader needs to trust the model is written beside it: the split, the
per-epoch history, the validation figures at the operating threshold and the command.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.config import MAX_LABEL_SMOOTHING, MAX_MIXUP
from core.model_store import (
    MODEL_FILE,
    ModelCard,
    ModelError,
    load_model,
    positive_probabilities,
    read_card,
)
from training.architectures import ARCHITECTURES, Spec
from training.augment import RandomRadiograph
from training.balance import Balance, balance
from training.data import CLASSES, Sample, discover, load_images
from training.ensemble import member_layer
from training.machine import device
from training.metrics import evaluate_predictions
from training.mixup import MixupBatches
from training.model_folder import created_now, new_workdir, operating_point, version_of
from training.shipping import ship
from training.split import SPLIT_FILE, read_split, split_by_patient, write_split
from training.weight_averaging import WeightAveraging, recompute_batch_norm

HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.keras"
log = logging.getLogger(__name__)


class TrainError(Exception):
    """The run cannot start as asked; the message says why."""


@dataclass(frozen=True)
class TrainRequest:
    data: Path
    architecture: str
    balance: Balance
    output: Path
    seed: int
    validation_fraction: float
    target_sensitivity: float
    input_size: int
    command: str
    calibration_copies: int
    labels_csv: Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    fixed_threshold: float | None = None
    split_seed: int | None = None
    init_from: Path | None = None
    init_member: str | None = None
    average_from_epoch: int | None = None
    # The [training.augmentations] table and its strengths, for an architecture that augments.
    augmentation_name: str | None = None
    augmentation: dict[str, float] | None = None
    mixup: float = 0.0
    label_smoothing: float = 0.0

    @property
    def patient_split_seed(self) -> int:
        """Models compared or ensembled must share validation patients, whatever their seed."""
        return self.seed if self.split_seed is None else self.split_seed


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch with the figures, time spent and an estimate of time left.

    It also keeps each epoch's wall time (training plus validation) for the card, because
    the first epoch carries the graph compilation and the rest show what an epoch costs.
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.started = time.monotonic()
        self.epoch_started = self.started
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        self.epoch_seconds.append(round(now - self.epoch_started, 2))
        elapsed = now - self.started
        remaining = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        figures = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        log.info(
            "epoch %d/%d %s | %s elapsed, at most %s left",
            epoch + 1,
            self.epochs,
            figures,
            _duration(elapsed),
            _duration(remaining),
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _callbacks(
    spec: Spec, progress: EpochProgress, workdir: Path, averaging: WeightAveraging | None
) -> list[keras.callbacks.Callback]:
    """Weight averaging needs a constant learning rate and keeps every epoch's weights, so
    it runs without early stopping, checkpoints or learning-rate cuts."""
    history = keras.callbacks.CSVLogger(str(workdir / HISTORY_FILE))
    if averaging is not None:
        return [progress, history, averaging]
    callbacks: list[keras.callbacks.Callback] = [
        progress,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=spec.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(
            workdir / CHECKPOINT_FILE, monitor="val_loss", save_best_only=True
        ),
        history,
    ]
    if spec.reduce_lr_on_plateau:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.3, patience=max(2, spec.patience // 3), min_lr=1e-6
            )
        )
    return callbacks


def _training_inputs(
    images: np.ndarray,
    labels: np.ndarray,
    class_weight: dict[int, float] | None,
    batch_size: int,
    request: TrainRequest,
) -> dict[str, Any]:
    """fit()'s training arguments. Mixup must see labels with the pixels, so it comes as a
    dataset that batches, shuffles and weights itself; fit() takes those settings for plain
    arrays only."""
    targets = keras.utils.to_categorical(labels, len(CLASSES))
    if request.mixup:
        batches = MixupBatches(
            images[..., np.newaxis], targets, batch_size, request.mixup, request.seed, class_weight
        )
        return {"x": batches}
    return {
        "x": images[..., np.newaxis],
        "y": targets,
        "batch_size": batch_size,
        "class_weight": class_weight,
        "shuffle": True,
    }


@dataclass(frozen=True)
class TrainedStart:
    """The weights a run starts from, and what the card records about where they came from."""

    weights: list[np.ndarray]
    record: dict[str, Any]

    def load_into(self, model: keras.Model) -> None:
        try:
            model.set_weights(self.weights)
        except ValueError as exc:
            raise TrainError(f"the weights of {self.record['model']} do not fit: {exc}") from exc


def trained_start(
    folder: Path, request: TrainRequest, validation: Sequence[Sample]
) -> TrainedStart:
    """The weights of a trained model, or of one member of an ensemble by name, checked
    before any image is converted. The model must have been validated on exactly this run's
    validation images (one that trained on any of them would flatter every figure) and be of
    this run's architecture and input size."""
    try:
        card = read_card(folder)
        theirs = read_split(folder / SPLIT_FILE, request.data, "validation")
    except (ModelError, OSError, ValueError, TypeError) as exc:
        raise TrainError(f"cannot start from {folder}: {exc}") from exc
    except KeyError as exc:
        raise TrainError(f"cannot start from {folder}: its {SPLIT_FILE} has no {exc}") from exc
    if {s.path.resolve() for s in theirs} != {s.path.resolve() for s in validation}:
        raise TrainError(
            f"{card.name} was validated on other images than this run's validation part:"
            " its training may have seen them"
        )
    members = card.training.get("members", [])
    names = [m["name"] for m in members]
    member = request.init_member
    if member is None and names:
        raise TrainError(
            f"{card.name} is an ensemble: choose one of its members with --member"
            f" ({', '.join(names)})"
        )
    if member is not None and not names:
        raise TrainError(f"{card.name} is not an ensemble: it has no members")
    if member is not None and member not in names:
        raise TrainError(f"{card.name} has no member {member!r} (its members: {', '.join(names)})")
    index = None if member is None else names.index(member)
    architecture = card.architecture if index is None else members[index]["architecture"]
    if architecture != request.architecture or card.input_size != request.input_size:
        raise TrainError(
            f"{member or card.name} is a {architecture} at {card.input_size} px,"
            f" not a {request.architecture} at {request.input_size} px"
        )
    try:
        trained = load_model(folder.parent, folder.name).keras_model
        if index is not None:
            trained = trained.get_layer(member_layer(index))
    except (ModelError, ValueError) as exc:
        raise TrainError(f"cannot start from {folder}: {exc}") from exc
    record: dict[str, Any] = {"model": card.name, "version": card.version, "member": member}
    if index is not None:
        record["member_version"] = members[index]["version"]
    return TrainedStart(trained.get_weights(), record)


def train(request: TrainRequest) -> ModelCard:
    """Train, choose the threshold on validation data, and write model, card and split."""
    spec = ARCHITECTURES[request.architecture]
    epochs = request.epochs or spec.epochs
    batch_size = request.batch_size or spec.batch_size
    learning_rate = request.learning_rate or spec.learning_rate
    if request.average_from_epoch is not None and not 1 <= request.average_from_epoch <= epochs:
        raise TrainError(
            f"weights can be averaged from an epoch between 1 and {epochs},"
            f" not {request.average_from_epoch}"
        )
    strengths = request.augmentation if spec.augment else None
    if spec.augment and strengths is None:
        raise TrainError(f"{request.architecture} trains with augmentation: give its strengths")
    if not 0 <= request.mixup <= MAX_MIXUP:
        raise TrainError(
            f"mixup is a Beta parameter between 0 and {MAX_MIXUP}, not {request.mixup}"
        )
    if not 0 <= request.label_smoothing < MAX_LABEL_SMOOTHING:
        raise TrainError(
            f"label smoothing is at least 0 and below {MAX_LABEL_SMOOTHING},"
            f" not {request.label_smoothing}"
        )
    keras.utils.set_random_seed(request.seed)

    samples = discover(request.data, request.labels_csv)
    train_index, validation_index = split_by_patient(
        samples, request.validation_fraction, request.patient_split_seed
    )
    start = (
        None
        if request.init_from is None
        else trained_start(request.init_from, request, [samples[i] for i in validation_index])
    )
    log.info("converting %d images to %dpx", len(samples), request.input_size)
    images = load_images(samples, request.input_size)
    training, validation = images.subset(train_index), images.subset(validation_index)
    x_train, y_train, class_weight = balance(
        training.pixels, training.labels, request.balance, request.seed
    )
    log.info(
        "training on %d images (%d after %s balancing), validating on %d, patients %d/%d",
        len(training.samples),
        len(x_train),
        request.balance.value,
        len(validation.samples),
        len(set(training.patients)),
        len(set(validation.patients)),
    )

    model = spec.build(request.input_size)
    if start is not None:
        start.load_into(model)
    fitted = model
    if strengths is not None:
        fitted = keras.Sequential(
            [
                keras.Input(model.input_shape[1:]),
                RandomRadiograph(**strengths, seed=request.seed),
                model,
            ]
        )
    optimizer = (
        keras.optimizers.AdamW(learning_rate, weight_decay=spec.weight_decay)
        if spec.weight_decay
        else keras.optimizers.Adam(learning_rate)
    )
    fitted.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=request.label_smoothing),
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    output = request.output.resolve()
    workdir = new_workdir(output)
    write_split(workdir / SPLIT_FILE, images.samples, train_index, validation_index, request.data)

    progress = EpochProgress(epochs)
    averaging = (
        None
        if request.average_from_epoch is None
        else WeightAveraging(model, request.average_from_epoch)
    )
    inputs = _training_inputs(x_train, y_train, class_weight, batch_size, request)
    started = time.monotonic()
    history = fitted.fit(
        **inputs,
        validation_data=(
            validation.pixels[..., np.newaxis],
            keras.utils.to_categorical(validation.labels, len(CLASSES)),
        ),
        epochs=epochs,
        callbacks=_callbacks(spec, progress, workdir, averaging),
        verbose=0,
    )
    averaged: dict[str, Any] | None = None
    if averaging is not None:
        # The statistics must be gathered under the averaged weights: apply first.
        epochs_averaged = averaging.apply()
        batches = recompute_batch_norm(fitted, x_train[..., np.newaxis], batch_size, request.seed)
        averaged = {
            "from_epoch": averaging.from_epoch,
            "epochs_averaged": epochs_averaged,
            "batch_norm_batches": batches,
        }
    seconds = time.monotonic() - started

    probabilities = positive_probabilities(model, validation.pixels, CLASSES.index("PNEUMONIA"))
    threshold, threshold_rule = operating_point(
        validation.labels, probabilities, request.target_sensitivity, request.fixed_threshold
    )
    figures = evaluate_predictions(validation.labels, probabilities, threshold)
    model.save(workdir / MODEL_FILE)
    (workdir / CHECKPOINT_FILE).unlink(missing_ok=True)

    training_info: dict[str, Any] = {
        "data": str(request.data),
        "images": len(samples),
        "train_images": len(training.samples),
        "train_patients": len(set(training.patients)),
        "validation_images": len(validation.samples),
        "validation_patients": len(set(validation.patients)),
        "balance": request.balance.value,
        "after_balancing": len(x_train),
        "augmentation": spec.augment,
        "mixup": request.mixup,
        "label_smoothing": request.label_smoothing,
        "epochs_requested": epochs,
        "epochs_run": len(history.history["loss"]),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": request.seed,
        "split_seed": request.patient_split_seed,
        "weight_decay": spec.weight_decay,
        "validation_fraction": request.validation_fraction,
        "split_file": SPLIT_FILE,
        "history_file": HISTORY_FILE,
        "seconds": round(seconds, 1),
        "epoch_seconds": progress.epoch_seconds,
        "device": device(),
        "keras": keras.__version__,
        "parameters": model.count_params(),
    }
    if strengths is not None:
        training_info["augmentation_profile"] = request.augmentation_name
        training_info["augmentation_strengths"] = strengths
    if start is not None:
        training_info["started_from"] = start.record
    if averaged is not None:
        training_info["weight_averaging"] = averaged
    card = ModelCard(
        name=output.name,
        version=version_of(workdir),
        architecture=request.architecture,
        input_size=request.input_size,
        threshold=threshold,
        classes=CLASSES,
        positive_class="PNEUMONIA",
        description=spec.description,
        threshold_rule=threshold_rule,
        command=request.command,
        created_at=created_now(),
        training=training_info,
        validation=figures,
    )
    card = ship(
        workdir,
        output,
        card,
        model,
        (training, validation),
        request.command,
        request.calibration_copies,
    )
    log.info(
        "saved %s: validation accuracy %.3f, AUC %.3f, sensitivity %.3f at threshold %.3f,"
        " ECE %.3f calibrated",
        output,
        figures["accuracy"],
        figures["auc"],
        figures["sensitivity"],
        card.threshold,
        card.validation["ece"],
    )
    return card

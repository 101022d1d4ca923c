"""Fitting a model folder's calibration (core.calibration) on its own validation patients.

The fit sees the validation images as they are and, for a model trained with augmentation,
the same images again under that augmentation (training.augment, fixed seeds): a department's
films differ from the training set in the ways the augmentation imitates, and a map fitted on
pristine images alone was measured over-confident on altered ones. A model trained without
augmentation (the study's RNN) is fitted on the images as they are: it was never built to
absorb those changes, and fitting to them only flattens its scores without making them
right. Both were measured by benchmarks/calibration_fit.py (docs/training.md, *Calibration
data*).

The card's threshold, chosen on raw scores, is carried onto the calibrated scale; the raw one
is kept so that a later fit starts again from it, never from an already calibrated value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from scipy.optimize import minimize
from scipy.special import expit

from core import drift
from core.calibration import METHOD, Calibration, log_terms
from core.config import AugmentationConfig
from core.keras_import import import_keras
from core.model_store import MODEL_FILE, ModelCard, ModelError, positive_probabilities, read_card
from training.data import DataError, LoadedImages, load_images
from training.metrics import evaluate_predictions, expected_calibration_error
from training.model_folder import version_of, write_card
from training.split import SPLIT_FILE, read_split

AUGMENTATION_SEED = 20261202
AUGMENT_BATCH = 256
MIN_WEIGHT = 1e-3


def augmentation_of(card: ModelCard) -> dict[str, float] | None:
    """The augmentation strengths the model was trained with, or None for a model trained
    without augmentation."""
    return _strengths(card.training)


def _strengths(training: dict[str, Any]) -> dict[str, float] | None:
    """An ensemble counts as augmented when every member was, down to ensembles of
    ensembles, and its copies vary as far as its most widely augmented member was trained
    to absorb: each strength is the largest of its members'.

    Recorded strengths are read through AugmentationConfig, so a card that lacks a strength
    added since gets that strength's default; a card from before strengths were recorded at
    all was trained with the defaults (tests/test_calibration.py pins them).
    """
    members = training.get("members")
    if members:
        each = [_strengths(m.get("training", {})) for m in members]
        known = [strengths for strengths in each if strengths is not None]
        if len(known) < len(each):
            return None
        return {key: max(s[key] for s in known) for key in known[0]}
    if not training.get("augmentation", False):
        return None
    # Absent (a card from before strengths were recorded) means the defaults; anything else
    # must read as strengths.
    recorded = training.get("augmentation_strengths")
    recorded = {} if recorded is None else recorded
    if not isinstance(recorded, dict):
        raise ModelError(
            "the card's augmentation_strengths cannot be read: expected a table of strengths,"
            f" not {type(recorded).__name__}"
        )
    try:
        return AugmentationConfig(**recorded).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"the card's augmentation_strengths cannot be read: {problems}") from None


def augmented(pixels: np.ndarray, copy: int, strengths: dict[str, float]) -> np.ndarray:
    """The images under the training augmentation, copy `copy` of a fixed series."""
    # Imported here, after import_keras has silenced TensorFlow's start-up notices.
    from training.augment import RandomRadiograph

    layer = RandomRadiograph(**strengths, seed=AUGMENTATION_SEED + copy)
    batches = [
        np.asarray(layer(pixels[start : start + AUGMENT_BATCH, ..., None], training=True))
        for start in range(0, len(pixels), AUGMENT_BATCH)
    ]
    return np.concatenate(batches)[..., 0].astype(np.float32)


def fit_beta(labels: np.ndarray, raw: np.ndarray) -> Calibration:
    """Log-loss of the map against Platt's smoothed targets, (positives + 1) /
    (positives + 2) and 1 / (negatives + 2) rather than 1 and 0, which keeps the fit finite
    when validation is perfectly separated (small sites, test fixtures).

    a and b are bounded below by a small positive number: a model whose validation scores
    fall as pneumonia rises gets nearly constant scores, strictly increasing still, rather
    than a map that turns its ranking upside down.
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    features = np.stack([*log_terms(raw), np.ones(len(raw))], axis=1)

    def loss(parameters: np.ndarray) -> tuple[float, np.ndarray]:
        z = features @ parameters
        # log(1 + e^z) - t z, and its gradient (sigmoid(z) - t) times the features.
        value = np.logaddexp(0.0, z) - targets * z
        gradient = features.T @ (expit(z) - targets) / len(z)
        return float(value.mean()), gradient

    fitted = minimize(
        loss,
        np.array([1.0, 1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(MIN_WEIGHT, None), (MIN_WEIGHT, None), (None, None)],
    )
    a, b, c = (float(v) for v in fitted.x)
    return Calibration(a, b, c)


def ranks(calibration: Calibration) -> bool:
    """False when the fit pressed both weights to their floor: the scores carry no ranking."""
    return max(calibration.a, calibration.b) > MIN_WEIGHT * (1 + 1e-6)


def fit_calibration(folder: Path, data: Path, command: str, copies: int) -> dict[str, Any]:
    """`calibrate` on the folder's saved model and the validation images of its split."""
    card = read_card(folder)
    split = folder / SPLIT_FILE
    if not split.is_file():
        raise DataError(f"{folder.name} has no {SPLIT_FILE}: its validation patients are unknown")
    keras = import_keras()
    model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    validation = load_images(read_split(split, data, "validation"), card.input_size)
    return calibrate(folder, model, validation, command, copies)


def calibrate(
    folder: Path, model: Any, validation: LoadedImages, command: str, copies: int
) -> dict[str, Any]:
    """Fit, record and apply the calibration in the folder's card; return its entry. Takes
    the images decoded, as training holds them already: decoding them again for the
    calibration and again for the content check cost a training run two more passes over
    its validation images, and one over its training images."""
    card = read_card(folder)
    labels = validation.labels

    def raw_scores(pixels: np.ndarray) -> np.ndarray:
        return positive_probabilities(model, pixels, card.positive_index)

    raw = raw_scores(validation.pixels)
    strengths = augmentation_of(card)
    copied = (
        []
        if strengths is None
        else [raw_scores(augmented(validation.pixels, k, strengths)) for k in range(copies)]
    )
    copies = len(copied)
    calibration = fit_beta(np.tile(labels, 1 + copies), np.concatenate([raw, *copied]))

    raw_threshold = float(card.calibration.get("uncalibrated_threshold", card.threshold))
    threshold = float(calibration.apply(np.array([raw_threshold]))[0])
    calibrated = calibration.apply(raw)
    entry: dict[str, Any] = {
        "method": METHOD,
        "a": calibration.a,
        "b": calibration.b,
        "c": calibration.c,
        "fitted_on": f"the {len(labels)} validation images of {SPLIT_FILE}"
        + (
            f" and {copies} copies of them under the training augmentation"
            if copies
            else " as they are (the model was trained without augmentation)"
        ),
        "uncalibrated_threshold": raw_threshold,
        "uncalibrated_ece": expected_calibration_error(labels, raw),
        "ece": expected_calibration_error(labels, calibrated),
        # What the weekly drift check (core.drift) compares a site's scores with.
        "validation_scores": drift.reference(calibrated, labels, card.classes),
        "command": command,
    }
    if not ranks(calibration):
        entry["warning"] = "the model does not rank its validation images: scores are flat"
    if copies:
        entry["augmentation_strengths"] = strengths
        entry["ece_augmented"] = expected_calibration_error(
            np.tile(labels, copies), calibration.apply(np.concatenate(copied))
        )
    updated = dataclasses.replace(
        card,
        version=version_of(folder, calibration),
        threshold=threshold,
        validation=evaluate_predictions(labels, calibrated, threshold),
        calibration=entry,
    )
    write_card(folder, updated)
    return entry

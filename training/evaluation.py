"""Scoring a shipped model on labelled images, exactly as the service would run it.

The images go through the service's conversion (training.data) and the model through
core.model_store, so a figure reported here is a figure about what radiologists get, at the
operating threshold written in the model's card rather than at a convenient 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.model_store import LoadedModel, ModelCard
from training.data import LoadedImages
from training.metrics import evaluate_predictions


@dataclass(frozen=True)
class Evaluation:
    card: ModelCard
    labels: np.ndarray
    probabilities: np.ndarray
    figures: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The figures with the model they belong to, for JSON output and reports."""
        return {"model": self.card.name, "model_version": self.card.version} | self.figures


def evaluate_model(model: LoadedModel, images: LoadedImages) -> Evaluation:
    probabilities = model.predict(images.pixels)
    labels = images.labels
    figures = evaluate_predictions(labels, probabilities, model.card.threshold)
    return Evaluation(model.card, labels, probabilities, figures)

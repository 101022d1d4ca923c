"""Evaluation figures, with pneumonia as the positive class throughout."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from training.data import CLASSES

CALIBRATION_BINS = 10


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean |observed pneumonia rate - mean predicted probability| over equal-width bins,
    weighted by the share of images in each bin."""
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    bins = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, CALIBRATION_BINS - 1)
    total = 0.0
    for b in range(CALIBRATION_BINS):
        members = bins == b
        if members.any():
            gap = abs(labels[members].mean() - probabilities[members].mean())
            total += members.mean() * gap
    return float(total)


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, target: float) -> float:
    """The most specific operating point whose sensitivity reaches `target`: it misses no
    more pneumonia than the target allows.

    Every distinct score is a candidate: with scikit-learn's default `drop_intermediate`, the
    points inside a vertical stretch of the ROC curve vanish and the rule would skip to a
    lower threshold than the target needs. The threshold sits midway between the score that
    reaches the target and the next lower one, so the same validation figures hold when the
    model runs on another machine whose arithmetic differs in the last bits.
    """
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError("threshold selection needs both classes in the validation data")
    _, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    index = int(np.flatnonzero(tpr >= target)[0])
    lower = float(thresholds[index + 1]) if index + 1 < len(thresholds) else 0.0
    return min(1.0, (float(thresholds[index]) + lower) / 2)


def evaluate_predictions(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, Any]:
    predicted = (probabilities >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=[0, 1], zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(CLASSES)
    }

    def average(weights: np.ndarray) -> dict[str, float]:
        return {
            key: float(np.average([per_class[c][key] for c in CLASSES], weights=weights))
            for key in ("precision", "recall", "f1")
        }

    both_classes = len(np.unique(labels)) == 2
    return {
        "n": len(labels),
        "threshold": threshold,
        "accuracy": float(accuracy_score(labels, predicted)),
        "auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "ece": expected_calibration_error(labels, probabilities),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "per_class": per_class,
        "macro_avg": average(np.ones(len(CLASSES))),
        "weighted_avg": average(support.astype(float)) if support.sum() else None,
    }

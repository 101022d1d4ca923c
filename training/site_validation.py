"""A department's acceptance test: the model's figures on its own labelled studies.

Sensitivity, specificity, PPV and NPV at the threshold in force, with Wilson 95% intervals
(exact enough at the tens to hundreds of studies a department labels, where the normal
approximation fails near 1); ROC AUC and the expected calibration error with percentile
bootstrap intervals (2,000 resamples, fixed seed, so a rerun gives the same figures); and
the threshold that would reach the target sensitivity on these studies, which is what a
site threshold (`pneumotriage threshold set`) would be set from.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from training.metrics import choose_threshold, evaluate_predictions, expected_calibration_error

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261202


def wilson(successes: int, total: int) -> tuple[float, float] | None:
    if total == 0:
        return None
    share = successes / total
    spread = Z95 * math.sqrt(share * (1 - share) / total + Z95**2 / (4 * total**2))
    centre = share + Z95**2 / (2 * total)
    scale = 1 + Z95**2 / total
    return ((centre - spread) / scale, (centre + spread) / scale)


def _bootstrap(labels: np.ndarray, scores: np.ndarray, statistic: Any) -> tuple[float, float]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[pick])) == 2:
            values.append(statistic(labels[pick], scores[pick]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def site_figures(
    labels: np.ndarray, scores: np.ndarray, threshold: float, target_sensitivity: float
) -> dict[str, Any]:
    """Every figure with its interval; needs both classes among the labels."""
    if len(np.unique(labels)) != 2:
        raise ValueError("the labelled studies need both pneumonia and normal ones")
    figures = evaluate_predictions(labels, scores, threshold)
    (tn, fp), (fn, tp) = figures["confusion_matrix"]
    rates = {
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    result: dict[str, Any] = {"n": len(labels), "positives": tp + fn, "threshold": threshold}
    for name, (hits, total) in rates.items():
        result[name] = {"value": hits / total if total else None, "ci95": wilson(hits, total)}
    result["auc"] = {
        "value": figures["auc"],
        "ci95": _bootstrap(labels, scores, roc_auc_score),
    }
    result["ece"] = {
        "value": figures["ece"],
        "ci95": _bootstrap(labels, scores, expected_calibration_error),
    }
    result["confusion_matrix"] = figures["confusion_matrix"]
    result["target_sensitivity"] = target_sensitivity
    result["threshold_for_target"] = choose_threshold(labels, scores, target_sensitivity)
    return result

"""Scores that mean what they say: Platt scaling of the model's log-odds.

A network's softmax is a ranking, not a probability: trained to separate classes, it is
usually over-confident, and more so on images unlike its training set. The calibration maps
the raw score p to sigmoid(slope * logit(p) + intercept), fitted by training.calibration on
validation images only. Two parameters, not one (temperature scaling fixes the intercept at
zero) because validation is three quarters pneumonia and a shift of the log-odds is part of
what a fit must be free to correct; not isotonic regression, whose steps tie distinct
scores, change the AUC and overfit the 269 normal validation images. With a positive slope
the map is strictly increasing, so ranking, AUC and the operating point's confusion matrix
are those of the raw scores: the card's threshold is simply carried onto the new scale.

Every score the service shows or thresholds comes out of this map (core.model_store and
core.heatmap apply it), so worker, `predict`, reports and web agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "Platt scaling of the log-odds: sigmoid(slope * logit(p) + intercept)"

# Softmax outputs reach exactly 0 or 1 in float32; the log-odds are taken a hair inside.
_EPSILON = 1e-7


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1.0 - _EPSILON)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw model scores; identity for a card without one."""
        if self.slope == 1.0 and self.intercept == 0.0:
            return np.asarray(raw, dtype=np.float64)
        z = self.slope * log_odds(raw) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> Calibration:
        if not entry:
            return cls()
        return cls(float(entry["slope"]), float(entry["intercept"]))

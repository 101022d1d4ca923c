"""Scores that mean what they say: beta calibration of the model's raw score.

A network's softmax is a ranking, not a probability: trained to separate classes, it is
usually over-confident, and more so on images unlike its training set. The calibration maps
the raw score p to sigmoid(a * ln p - b * ln(1 - p) + c) (Kull, Silva Filho and Flach,
2017), fitted by training.calibration on validation images only. Platt scaling of the
log-odds is the special case a = b, and temperature scaling the case a = b, c = 0; the
third parameter is there because the study's RNN squeezes its scores against one end and
Platt's symmetric map made its validation calibration worse, not better (docs/training.md,
*Calibration*). Not isotonic regression, whose steps tie distinct scores, change the AUC and
overfit the 269 normal validation images. With a and b positive the map is strictly
increasing, so ranking, AUC and the operating point's confusion matrix are those of the raw
scores: the card's threshold is simply carried onto the new scale.

Every score the service shows or thresholds comes out of this map (core.model_store and
core.heatmap apply it), so worker, `predict`, reports and web agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "beta calibration: sigmoid(a * ln(p) - b * ln(1 - p) + c), a, b > 0"

# Softmax outputs reach exactly 0 or 1 in float32; the logarithms are taken a hair inside.
_EPSILON = 1e-7


def log_terms(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln p and -ln(1 - p), the two features of the map."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1.0 - _EPSILON)
    return np.log(p), -np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """a = b = 1, c = 0 is the identity: a card without a calibration leaves scores alone."""

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def apply(self, raw: np.ndarray) -> np.ndarray:
        if (self.a, self.b, self.c) == (1.0, 1.0, 0.0):
            return np.asarray(raw, dtype=np.float64)
        log_p, log_q = log_terms(raw)
        z = self.a * log_p + self.b * log_q + self.c
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def from_card(cls, entry: dict[str, Any]) -> Calibration:
        if not entry:
            return cls()
        return cls(float(entry["a"]), float(entry["b"]), float(entry["c"]))

"""The drift statistic: a change of case mix is not drift, a change of scores is."""

from __future__ import annotations

import numpy as np
import pytest

from core.drift import BINS, measure, reference

CLASSES = ("NORMAL", "PNEUMONIA")


def _validation(n: int = 4000) -> dict[str, object]:
    """Validation-like scores: three quarters pneumonia, each class near its own end."""
    rng = np.random.default_rng(3)
    labels = (rng.random(n) < 0.75).astype(int)
    scores = np.where(labels == 1, rng.beta(8, 2, n), rng.beta(2, 8, n))
    return reference(scores, labels, CLASSES)


def _site(share: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < share
    return np.where(positive, rng.beta(8, 2, n), rng.beta(2, 8, n))


def test_the_reference_keeps_each_class_apart() -> None:
    card = _validation()
    assert card["bins"] == BINS
    assert sum(card["PNEUMONIA"]) > 2 * sum(card["NORMAL"])


@pytest.mark.parametrize("share", [0.1, 0.3, 0.75])
def test_a_different_case_mix_is_estimated_not_flagged(share: float) -> None:
    drift = measure(_site(share, 1000, seed=int(share * 100)), _validation(), "PNEUMONIA")
    assert drift.pneumonia_share == pytest.approx(share, abs=0.04)
    assert drift.validation_share == pytest.approx(0.75, abs=0.03)
    assert drift.psi < 0.1 and drift.ks < 0.05


def test_scores_unlike_any_mix_of_validation_are_flagged() -> None:
    rng = np.random.default_rng(5)
    hedging = rng.beta(5, 5, 1000)  # a new detector: every score near the middle
    drift = measure(hedging, _validation(), "PNEUMONIA")
    assert drift.psi > 1.0 and drift.ks > 0.2


def test_a_small_week_from_validation_itself_is_not_called_drift() -> None:
    """Twenty bins and sixty results: the PSI is large from chance alone, and its p-value
    says so."""
    drift = measure(_site(0.3, 60, seed=9), _validation(), "PNEUMONIA")
    assert drift.psi > 0.25 and drift.p_value > 0.05
    hedging = measure(np.random.default_rng(2).beta(5, 5, 60), _validation(), "PNEUMONIA")
    assert hedging.p_value < 0.01

"""The calibration map: what it recovers, what it keeps, and what it refuses to do."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import Calibration, log_odds
from training.calibration import MIN_SLOPE, fit_platt
from training.metrics import expected_calibration_error


def _scores(slope: float, intercept: float, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores whose true probability is sigmoid(slope * logit(raw) + intercept)."""
    rng = np.random.default_rng(7)
    raw = 1 / (1 + np.exp(-rng.normal(0, 3, n)))
    truth = Calibration(slope, intercept).apply(raw)
    return (rng.random(n) < truth).astype(int), raw


def test_the_fit_recovers_an_over_confident_model() -> None:
    labels, raw = _scores(0.5, 0.8)
    fitted = fit_platt(labels, raw)
    assert fitted.slope == pytest.approx(0.5, abs=0.03)
    assert fitted.intercept == pytest.approx(0.8, abs=0.06)
    before = expected_calibration_error(labels, raw)
    after = expected_calibration_error(labels, fitted.apply(raw))
    assert before > 0.1 and after < 0.02


def test_the_map_keeps_the_ranking() -> None:
    raw = np.sort(np.random.default_rng(1).random(500))
    calibrated = Calibration(0.4, -1.2).apply(raw)
    assert np.all(np.diff(calibrated) > 0)


def test_scores_of_exactly_zero_and_one_stay_finite() -> None:
    calibrated = Calibration(0.5, 0.3).apply(np.array([0.0, 1.0]))
    assert np.isfinite(calibrated).all() and 0 < calibrated[0] < calibrated[1] < 1
    assert np.isfinite(log_odds(np.array([0.0, 1.0]))).all()


def test_a_card_without_calibration_leaves_scores_alone() -> None:
    raw = np.array([0.1, 0.5, 0.93])
    assert Calibration.from_card({}).apply(raw).tolist() == raw.tolist()


def test_perfectly_separated_validation_gives_a_finite_fit() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    fitted = fit_platt(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert np.isfinite([fitted.slope, fitted.intercept]).all()
    # Platt's smoothed targets: never a certainty from six images.
    assert fitted.apply(np.array([0.9]))[0] < 0.9


def test_a_model_that_ranks_backwards_gets_flat_scores_not_inverted_ones() -> None:
    labels, raw = _scores(1.0, 0.0, n=2000)
    fitted = fit_platt(labels, 1 - raw)
    assert fitted.slope == pytest.approx(MIN_SLOPE)
    calibrated = fitted.apply(1 - raw)
    assert np.ptp(calibrated) < 0.05
    assert calibrated.mean() == pytest.approx(labels.mean(), abs=0.03)

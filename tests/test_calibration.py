"""The calibration map: what it recovers, what it keeps, and what it refuses to do."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import Calibration, log_terms
from core.config import AugmentationConfig
from core.model_store import ModelCard, ModelError
from training.calibration import MIN_WEIGHT, augmentation_of, fit_beta, ranks
from training.metrics import expected_calibration_error


def _scores(truth: Calibration, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores whose true probability is truth.apply(raw)."""
    rng = np.random.default_rng(7)
    raw = 1 / (1 + np.exp(-rng.normal(0, 3, n)))
    return (rng.random(n) < truth.apply(raw)).astype(int), raw


@pytest.mark.parametrize(
    "truth",
    [Calibration(0.5, 0.5, 0.8), Calibration(0.3, 1.2, -0.4)],
    ids=["over-confident (Platt's case)", "lopsided"],
)
def test_the_fit_recovers_the_map_behind_the_scores(truth: Calibration) -> None:
    labels, raw = _scores(truth)
    fitted = fit_beta(labels, raw)
    assert (fitted.a, fitted.b) == pytest.approx((truth.a, truth.b), abs=0.05)
    assert fitted.c == pytest.approx(truth.c, abs=0.1)
    before = expected_calibration_error(labels, raw)
    after = expected_calibration_error(labels, fitted.apply(raw))
    assert before > 0.05 and after < 0.02


def test_the_map_keeps_the_ranking() -> None:
    raw = np.sort(np.random.default_rng(1).random(500))
    calibrated = Calibration(0.4, 1.5, -1.2).apply(raw)
    assert np.all(np.diff(calibrated) > 0)


def test_scores_of_exactly_zero_and_one_stay_finite() -> None:
    calibrated = Calibration(0.5, 0.7, 0.3).apply(np.array([0.0, 1.0]))
    assert np.isfinite(calibrated).all() and 0 < calibrated[0] < calibrated[1] < 1
    assert np.isfinite(log_terms(np.array([0.0, 1.0]))).all()


def test_a_card_without_calibration_leaves_scores_alone() -> None:
    raw = np.array([0.1, 0.5, 0.93])
    assert Calibration.from_card({}).apply(raw).tolist() == raw.tolist()
    # The identity is also what the formula gives for a = b = 1, c = 0.
    log_p, log_q = log_terms(raw)
    np.testing.assert_allclose(1 / (1 + np.exp(-(log_p + log_q))), raw)


def test_perfectly_separated_validation_gives_a_finite_fit() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    fitted = fit_beta(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]))
    assert np.isfinite([fitted.a, fitted.b, fitted.c]).all()
    # Platt's smoothed targets: never a certainty from six images.
    assert fitted.apply(np.array([0.9]))[0] < 0.9


def test_a_model_that_ranks_backwards_gets_flat_scores_not_inverted_ones() -> None:
    labels, raw = _scores(Calibration(), n=2000)
    fitted = fit_beta(labels, 1 - raw)
    assert (fitted.a, fitted.b) == pytest.approx((MIN_WEIGHT, MIN_WEIGHT))
    assert not ranks(fitted)
    calibrated = fitted.apply(1 - raw)
    assert np.ptp(calibrated) < 0.05
    assert calibrated.mean() == pytest.approx(labels.mean(), abs=0.03)


def test_an_ensemble_of_ensembles_counts_as_augmented_when_every_leaf_was() -> None:
    """Calibrated with augmented copies or on the images as they are: an ensemble of two
    ensembles must be fitted the way each of them was, and its copies vary as far as its
    most widely augmented member was trained to absorb."""
    legacy = {"training": {"augmentation": True}}
    wide = dict(AugmentationConfig().model_dump(), rotation_degrees=20.0)
    wider = {"training": {"augmentation": True, "augmentation_strengths": wide}}
    plain = {"training": {"augmentation": False}}

    def card(*members: dict) -> ModelCard:
        return _card({"members": list(members)})

    # A card that records some strengths only (one written before a strength was added)
    # gets the defaults for the rest.
    partial = {"training": {"augmentation": True, "augmentation_strengths": {"noise": 0.1}}}
    assert augmentation_of(card(legacy, partial)) == dict(
        AugmentationConfig().model_dump(), noise=0.1
    )
    inner = {"training": {"members": [legacy, legacy]}}
    # A card from before the strengths were recorded was trained with the defaults.
    assert augmentation_of(card(inner, legacy)) == AugmentationConfig().model_dump()
    assert augmentation_of(card(inner, wider)) == wide
    mixed = {"training": {"members": [legacy, plain]}}
    assert augmentation_of(card(inner, mixed)) is None


def test_the_defaults_are_what_cards_without_strengths_were_trained_with() -> None:
    """Cards written before the strengths were recorded are read as trained with the
    defaults, so changing a default would silently recalibrate every such model: the
    values the shipped members were trained with are pinned here."""
    assert AugmentationConfig().model_dump() == {
        "rotation_degrees": 10.0,
        "shift_fraction": 0.08,
        "zoom_fraction": 0.15,
        "aspect_fraction": 0.15,
        "gamma_range": 0.6,
        "sharpness": 1.0,
        "noise": 0.03,
    }


@pytest.mark.parametrize(
    ("recorded", "problem"),
    [
        ({"wobble": 1.0}, "wobble: Extra inputs"),
        ({"rotation_degrees": 99.0}, "rotation_degrees"),
        ([0.1], "expected a table of strengths, not list"),
    ],
)
def test_strengths_a_card_cannot_hold_are_a_model_error_not_a_traceback(
    recorded: dict, problem: str
) -> None:
    card = _card({"augmentation": True, "augmentation_strengths": recorded})
    with pytest.raises(ModelError, match=f"augmentation_strengths cannot be read: {problem}"):
        augmentation_of(card)


def _card(training: dict) -> ModelCard:
    return ModelCard(
        name="m",
        version="v",
        architecture="cnn-lstm",
        input_size=150,
        threshold=0.5,
        training=training,
    )

"""The models in models/ load under TensorFlow on this CPU and keep their cards' promises."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT
from dicom_factory import fixture_images

from core.calibration import Calibration
from core.config import load_config
from core.model_store import CARD_FILE, load_model, read_card
from core.pixels import convert_file

MODELS = ROOT / "models"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if (p / CARD_FILE).is_file())


@pytest.fixture(scope="module")
def fixtures() -> tuple[np.ndarray, np.ndarray]:
    images = fixture_images()
    labels = np.array([path.parent.name == "PNEUMONIA" for path in images])
    return np.stack([convert_file(path, 150).pixels for path in images]), labels


def test_the_configured_default_and_the_reproduction_are_shipped() -> None:
    assert {"seed-rnn", load_config(ROOT / "config.toml", environ={}).model.name} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_states_what_the_service_and_a_reader_need(name: str) -> None:
    card = read_card(MODELS / name)
    assert card.name == name and card.version and card.command.startswith("pneumotriage ")
    assert card.classes == ("NORMAL", "PNEUMONIA") and card.positive_class == "PNEUMONIA"
    assert 0 < card.threshold < 1 and card.threshold_rule and card.input_size == 150
    figures = card.validation
    assert figures["n"] == sum(map(sum, figures["confusion_matrix"])) > 1000
    assert 0.5 < figures["auc"] <= 1 and 0 <= figures["ece"] <= 1
    assert (MODELS / name / "split.csv").is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_is_calibrated_and_its_threshold_carried_over(name: str) -> None:
    card = read_card(MODELS / name)
    entry = card.calibration
    assert entry["a"] > 0 and entry["b"] > 0 and "warning" not in entry
    raw = np.array([entry["uncalibrated_threshold"]])
    assert Calibration.from_card(entry).apply(raw)[0] == pytest.approx(card.threshold)
    assert entry["ece"] == pytest.approx(card.validation["ece"]) and entry["ece"] <= 0.05
    scores = entry["validation_scores"]
    assert sum(scores["NORMAL"]) + sum(scores["PNEUMONIA"]) == card.validation["n"]


@pytest.mark.parametrize("name", SHIPPED)
def test_model_predicts_fixtures_at_its_cards_threshold(
    name: str, fixtures: tuple[np.ndarray, np.ndarray]
) -> None:
    model = load_model(MODELS, name)
    pixels, _ = fixtures
    batch = model.predict(pixels)
    one_by_one = np.array([model.predict(image[None])[0] for image in pixels])
    assert np.all((batch >= 0) & (batch <= 1))
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    labels = [model.card.label_for(p) for p in batch]
    assert labels == ["PNEUMONIA" if p >= model.card.threshold else "NORMAL" for p in batch]


def test_default_model_labels_every_fixture_radiograph_right(
    fixtures: tuple[np.ndarray, np.ndarray],
) -> None:
    """Its card promises sensitivity and specificity near 0.97 on unseen patients; twelve
    clear radiographs must all come out right."""
    model = load_model(MODELS, load_config(ROOT / "config.toml", environ={}).model.name)
    pixels, truth = fixtures
    flagged = model.predict(pixels) >= model.card.threshold
    assert flagged.tolist() == truth.tolist()

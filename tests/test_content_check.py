"""The content check of the shipped model refuses what is not a frontal chest radiograph.

None of these images was used to fit it: pydicom's bundled CT, MR, ultrasound and other
samples, scikit-image's sample pictures, screenshots of the product's pages, blank, noise
and saturated images, and the fixture radiographs (from the training set) upside down. The
radiographs themselves pass. The validation pass rate (at least 99.5%) is measured by
`benchmarks/content_check.py` on `../shared`, which tests may not need; here the card must
carry it, and the service, `predict` and the try-it page must all apply the check.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, predict
from dicom_factory import fixture_images

from benchmarks.content_check import sample_sets
from core.config import load_config
from core.content_check import REFUSAL, ContentCheckError, load
from core.model_store import model_dir, read_card
from core.pixels import convert_file

CONFIG = load_config(ROOT / "config.toml", environ={})


@pytest.fixture(scope="module")
def shipped() -> tuple:
    folder = model_dir(CONFIG.model.directory, CONFIG.model.name)
    card = read_card(folder)
    return card, load(folder, card.content_check)


def test_the_card_says_how_the_limits_were_set(shipped: tuple) -> None:
    card, check = shipped
    entry = card.content_check
    assert entry["validation_pass_rate"] >= 0.995
    assert entry["limit"] == pytest.approx(check.limit)
    assert "Mahalanobis" in entry["method"] and "pneumotriage content-check" in entry["command"]


def test_radiographs_pass_and_the_rest_is_refused(shipped: tuple) -> None:
    card, check = shipped
    radiographs = np.stack([convert_file(p, card.input_size).pixels for p in fixture_images()])
    assert [check.refusal(image) for image in radiographs] == [None] * len(radiographs)
    others = {"upside down": radiographs[:, ::-1, :]} | sample_sets(card.input_size)
    refused = {
        name: [check.refusal(image) is not None for image in images]
        for name, images in others.items()
    }
    assert all(len(flags) >= 5 for flags in refused.values()), refused
    every = [flag for flags in refused.values() for flag in flags]
    assert sum(every) / len(every) >= 0.95, {n: np.mean(f) for n, f in refused.items()}
    assert all(refused["upside down"])
    assert all(refused["screenshots and figures of the product"])


def test_the_reason_names_the_score_and_the_limit(shipped: tuple) -> None:
    _, check = shipped
    noise = np.random.default_rng(1).random((150, 150))
    assert check.refusal(noise) == (
        f"{REFUSAL} (score {check.scores(noise[None])[0]:.0f}, limit {check.limit:.0f})"
    )
    blank = check.refusal(np.zeros((150, 150)))
    assert blank is not None and blank.startswith(f"{REFUSAL} (blank")
    upside_down = convert_file(fixture_images()[0], 150).pixels[::-1]
    assert "upside down" in (check.refusal(upside_down) or "")


def test_arrays_that_do_not_match_the_card_are_refused(tmp_path, shipped: tuple) -> None:
    card, _ = shipped
    (tmp_path / "content_check.npz").write_bytes(b"not the arrays")
    with pytest.raises(ContentCheckError, match="does not match its model card"):
        load(tmp_path, card.content_check)


def test_predict_refuses_a_screenshot_of_the_report_page() -> None:
    screenshot = ROOT / "docs" / "screenshots" / "worklist.png"
    result = predict("--format", "json", str(screenshot), str(fixture_images()[0]))
    assert result.returncode == 1, result.stderr
    refused, scored = json.loads(result.stdout)
    assert refused["label"] is None and refused["error"].startswith(REFUSAL)
    assert scored["label"] in ("NORMAL", "PNEUMONIA")
    assert result.stderr.count(REFUSAL) == 1

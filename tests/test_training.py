"""Training, evaluation and comparison on the fixture radiographs, in seconds.

The fixtures (tests/data/images, see ATTRIBUTION.md there) are twelve Kermany images of nine
patients, two of whom have two images each, so the patient split and SMOTE have real work
to do. Images are converted at 48 px to keep every training run to a few seconds.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import ROOT

from core.calibration import Calibration
from core.config import load_config
from core.model_store import ModelCard, ModelError, load_model, positive_probabilities, read_card
from pneumotriage import cli
from pneumotriage.cli import UNAUGMENTED, main
from training.architectures import ARCHITECTURES
from training.balance import Balance, balance
from training.calibration import fit_calibration
from training.compare import CompareRequest, comparison_markdown, run_all, seconds_per_epoch
from training.content_check import fit_content_check
from training.data import CLASSES, Sample, discover, load_images, patient_key
from training.ensemble import EnsembleError, EnsembleRequest, build_ensemble
from training.metrics import choose_threshold, evaluate_predictions, expected_calibration_error
from training.mixup import MixupBatches
from training.split import SPLIT_FILE, read_split, split_by_patient
from training.train import HISTORY_FILE, TrainError, TrainRequest, train, trained_start

FIXTURES = ROOT / "tests" / "data" / "images"
CONFIG = ROOT / "config.toml"
SIZE = 48
SEED = 0
# Half of the nine fixture patients go to validation; with seed 0 that leaves 2 NORMAL and
# 4 PNEUMONIA training images, so SMOTE has two NORMAL images to synthesise.
FRACTION = 0.5
AUGMENTATIONS = load_config(CONFIG).training.augmentations
STANDARD = AUGMENTATIONS["standard"].model_dump()


def _request(tmp: Path, architecture: str, method: Balance, epochs: int) -> TrainRequest:
    return TrainRequest(
        data=FIXTURES,
        architecture=architecture,
        balance=method,
        output=tmp / architecture,
        seed=SEED,
        validation_fraction=FRACTION,
        target_sensitivity=0.9,
        input_size=SIZE,
        command=f"test {architecture}",
        calibration_copies=1,
        epochs=epochs,
        augmentation=STANDARD,
    )


@pytest.fixture(scope="module")
def seed_rnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelCard]:
    folder = tmp_path_factory.mktemp("models")
    card = train(_request(folder, "seed-rnn", Balance.SMOTE, epochs=2))
    return folder / "seed-rnn", card


def _split_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / SPLIT_FILE).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_run(folder: Path, card: ModelCard, architecture: str, epochs: int) -> None:
    assert read_card(folder) == card
    assert card.architecture == architecture and card.input_size == SIZE
    assert card.training["epochs_run"] == epochs
    assert len(card.training["epoch_seconds"]) == epochs
    with (folder / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == epochs

    rows = _split_rows(folder)
    assert len(rows) == 12
    sides = {r["subset"]: {x["patient"] for x in rows if x["subset"] == r["subset"]} for r in rows}
    assert not sides["train"] & sides["validation"]

    # The card's figures are about exactly the validation files of split.csv, and the saved
    # model reproduces them: nothing was added to or lost from the validation part.
    validation = [r for r in rows if r["subset"] == "validation"]
    counts = Counter(r["label"] for r in validation)
    matrix = card.validation["confusion_matrix"]
    assert card.validation["n"] == len(validation)
    assert [sum(matrix[0]), sum(matrix[1])] == [counts["NORMAL"], counts["PNEUMONIA"]]
    samples = [
        Sample(FIXTURES / r["file"], CLASSES.index(r["label"]), r["patient"]) for r in validation
    ]
    images = load_images(samples, SIZE)
    probabilities = load_model(folder.parent, folder.name).predict(images.pixels)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    again = evaluate_predictions(images.labels, probabilities, card.threshold)
    assert again["confusion_matrix"] == matrix
    assert again["auc"] == pytest.approx(card.validation["auc"])
    # Shipped calibrated: the threshold was carried onto the calibrated scale, so the raw
    # scores at the raw threshold flag exactly the images the card counts.
    calibration = card.calibration
    raw = positive_probabilities(
        load_model(folder.parent, folder.name).keras_model, images.pixels, card.positive_index
    )
    raw_figures = evaluate_predictions(images.labels, raw, calibration["uncalibrated_threshold"])
    assert raw_figures["confusion_matrix"] == matrix
    assert calibration["a"] > 0 and calibration["b"] > 0
    assert calibration["ece"] == pytest.approx(card.validation["ece"])
    assert calibration["uncalibrated_ece"] == pytest.approx(raw_figures["ece"])
    mapped = Calibration.from_card(calibration).apply(raw)
    np.testing.assert_allclose(probabilities, mapped, atol=1e-12)
    # Shipped with its content check, fitted on the same split, which its images pass.
    assert (folder / "content_check.npz").is_file()
    assert card.content_check["fitted_on"].startswith("the 6 training images")
    assert load_model(folder.parent, folder.name).refusal(images.pixels[0]) is None
    _refits_agree(folder, card)


def _refits_agree(folder: Path, card: ModelCard) -> None:
    """Fitted on the images training had decoded, the calibration and the content check are
    what `calibrate` and `content-check` fit on the saved model and split: the same images,
    in the same order."""
    copy = folder.parent / f"{folder.name}-refitted"
    shutil.copytree(folder, copy)
    refitted = fit_calibration(copy, FIXTURES, card.command, copies=1)
    for key in ("a", "b", "c", "ece", "uncalibrated_threshold"):
        assert refitted[key] == pytest.approx(card.calibration[key], rel=1e-4, abs=1e-6), key
    checked = fit_content_check(copy, FIXTURES, card.command)
    assert checked["limit"] == pytest.approx(card.content_check["limit"], rel=1e-9)
    assert checked["sha256"] == card.content_check["sha256"]


def test_seed_rnn_trains_end_to_end_with_smote(seed_rnn: tuple[Path, ModelCard]) -> None:
    folder, card = seed_rnn
    _check_run(folder, card, "seed-rnn", epochs=2)
    # 2 NORMAL + 4 PNEUMONIA training images: SMOTE adds two synthetic NORMAL images.
    assert card.training["train_images"] == 6
    assert card.training["after_balancing"] == 8
    assert card.training["validation_images"] == 6


def test_cnn_trains_end_to_end_with_class_weights(tmp_path: Path) -> None:
    card = train(_request(tmp_path, "cnn", Balance.CLASS_WEIGHT, epochs=1))
    _check_run(tmp_path / "cnn", card, "cnn", epochs=1)
    assert card.training["after_balancing"] == card.training["train_images"] == 6
    assert card.training["augmentation"] is True
    assert "1 copies of them under the training augmentation" in card.calibration["fitted_on"]
    assert "ece_augmented" in card.calibration


def _ensemble_of(models: Path, *members: str) -> EnsembleRequest:
    return EnsembleRequest(
        members=members,
        models_directory=models,
        data=FIXTURES,
        output=models / "both",
        target_sensitivity=0.9,
        command="test ensemble",
        calibration_copies=1,
    )


def test_a_member_whose_strengths_cannot_be_read_is_refused_before_any_is_loaded(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path
) -> None:
    """The calibration reads them last, after every member was scored: found there, the
    error would come as a traceback and leave a work folder behind."""
    models = tmp_path / "models"
    for name in ("a", "b"):
        shutil.copytree(seed_rnn[0], models / name)
    card_file = models / "b" / "card.json"
    card = json.loads(card_file.read_text(encoding="utf-8"))
    card["training"] |= {"augmentation": True, "augmentation_strengths": {"wobble": 1.0}}
    card |= {"name": "b", "version": "another"}
    card_file.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(EnsembleError, match="b: the card's augmentation_strengths cannot be read"):
        build_ensemble(_ensemble_of(models, "a", "b"))
    assert sorted(p.name for p in models.iterdir()) == ["a", "b"]


def test_mixup_smoothing_and_a_named_augmentation_are_trained_recorded_and_calibrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card says how the model was trained, and the calibration's augmented copies vary
    as far as that training did, not as far as the default does."""
    blended: list[int] = []
    smoothing: list[float] = []

    class CountedMixup(MixupBatches):
        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            blended.append(index)
            return super().__getitem__(index)

    class RecordedLoss(keras.losses.CategoricalCrossentropy):
        def __init__(self, **kwargs: Any) -> None:
            smoothing.append(kwargs["label_smoothing"])
            super().__init__(**kwargs)

    monkeypatch.setattr("training.train.MixupBatches", CountedMixup)
    monkeypatch.setattr(keras.losses, "CategoricalCrossentropy", RecordedLoss)
    strong = AUGMENTATIONS["strong"].model_dump()
    assert strong != STANDARD
    request = replace(
        _request(tmp_path, "cnn", Balance.CLASS_WEIGHT, epochs=1),
        augmentation_name="strong",
        augmentation=strong,
        mixup=0.4,
        label_smoothing=0.1,
    )
    card = train(request)
    _check_run(tmp_path / "cnn", card, "cnn", epochs=1)
    assert card.training["mixup"] == 0.4
    # The epoch's one training batch (6 images, batch 32) came blended; Keras may read it
    # more than once to learn its shape.
    assert set(blended) == {0}
    assert smoothing == [0.1] and card.training["label_smoothing"] == 0.1
    assert card.training["augmentation_profile"] == "strong"
    assert card.training["augmentation_strengths"] == strong
    assert card.calibration["augmentation_strengths"] == strong


def test_an_augmented_architecture_without_strengths_or_bad_mixup_or_smoothing_is_refused(
    tmp_path: Path,
) -> None:
    request = _request(tmp_path, "cnn", Balance.NONE, epochs=1)
    with pytest.raises(TrainError, match="cnn trains with augmentation"):
        train(replace(request, augmentation=None))
    with pytest.raises(TrainError, match=r"mixup is a Beta parameter between 0 and 10\.0"):
        train(replace(request, mixup=-0.2))
    with pytest.raises(TrainError, match=r"label smoothing is at least 0 and below 0\.5"):
        train(replace(request, label_smoothing=0.5))
    assert not (tmp_path / "cnn").exists()


def test_the_command_line_knows_the_architectures_and_which_train_without_augmentation() -> None:
    """pneumotriage.cli spells them out so as not to load Keras for every command."""
    assert set(UNAUGMENTED) == {name for name, spec in ARCHITECTURES.items() if not spec.augment}
    assert set(cli.ARCHITECTURES) == set(ARCHITECTURES)


def test_an_ensemble_averages_its_members_and_ships_calibrated_and_checked(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(seed_rnn[0], models / "seed-rnn")
    train(_request(models, "cnn", Balance.CLASS_WEIGHT, epochs=1))
    card = build_ensemble(_ensemble_of(models, "seed-rnn", "cnn"))
    assert card.architecture == "cnn+seed-rnn" and read_card(models / "both") == card
    images = load_images(read_split(models / "both" / SPLIT_FILE, FIXTURES, "validation"), SIZE)
    assert card.validation["n"] == len(images.samples)

    def raw(name: str) -> np.ndarray:
        model = load_model(models, name).keras_model
        return positive_probabilities(model, images.pixels, card.positive_index)

    np.testing.assert_allclose(raw("both"), (raw("seed-rnn") + raw("cnn")) / 2, atol=1e-6)
    assert (models / "both" / "content_check.npz").is_file()
    _refits_agree(models / "both", card)

    # A member of the ensemble, by name, is where a further run can start from.
    start = replace(_request(tmp_path, "cnn", Balance.CLASS_WEIGHT, 1), init_from=models / "both")
    both = models / "both"
    chosen = trained_start(both, replace(start, init_member="cnn"), images.samples)
    assert chosen.record == {
        "model": "both",
        "version": card.version,
        "member": "cnn",
        "member_version": read_card(models / "cnn").version,
    }
    member = load_model(models, "cnn").keras_model
    for ours, theirs in zip(chosen.weights, member.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    refusals = {
        "cnn-2": "both has no member 'cnn-2' (its members: seed-rnn, cnn)",
        None: "both is an ensemble: choose one of its members with --member (seed-rnn, cnn)",
    }
    for name, message in refusals.items():
        with pytest.raises(TrainError, match=re.escape(message)):
            trained_start(both, replace(start, init_member=name), images.samples)
    with pytest.raises(TrainError, match="seed-rnn is a seed-rnn at 48 px, not a cnn at 48 px"):
        trained_start(both, replace(start, init_member="seed-rnn"), images.samples)
    with pytest.raises(TrainError, match="cnn is a cnn at 48 px, not a cnn at 64 px"):
        trained_start(both, replace(start, init_member="cnn", input_size=64), images.samples)
    with pytest.raises(TrainError, match="cnn is not an ensemble"):
        trained_start(models / "cnn", replace(start, init_member="x"), images.samples)


def test_an_ensemble_grows_by_the_members_of_an_ensemble_named_beside_new_models(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path
) -> None:
    """Naming an ensemble takes its members one by one, so that each new model weighs as
    much as an old one; a model named twice, on its own or inside an ensemble, is refused."""
    models = tmp_path / "models"
    shutil.copytree(seed_rnn[0], models / "seed-rnn")
    train(_request(models, "cnn", Balance.CLASS_WEIGHT, epochs=1))
    build_ensemble(replace(_ensemble_of(models, "seed-rnn", "cnn"), output=models / "old"))
    train(_request(models, "cnn-lstm-columns", Balance.CLASS_WEIGHT, epochs=1))
    card = build_ensemble(_ensemble_of(models, "old", "cnn-lstm-columns"))
    assert card.architecture == "cnn+cnn-lstm-columns+seed-rnn"
    assert [m["name"] for m in card.training["members"]] == ["seed-rnn", "cnn", "cnn-lstm-columns"]
    images = load_images(read_split(models / "both" / SPLIT_FILE, FIXTURES, "validation"), SIZE)

    def raw(name: str) -> np.ndarray:
        model = load_model(models, name).keras_model
        return positive_probabilities(model, images.pixels, card.positive_index)

    alone = [raw(name) for name in ("seed-rnn", "cnn", "cnn-lstm-columns")]
    np.testing.assert_allclose(raw("both"), sum(alone) / 3, atol=1e-6)
    with pytest.raises(EnsembleError, match="cnn and old / cnn are the same model name"):
        build_ensemble(_ensemble_of(models, "old", "cnn"))
    # A recalibrated model has a new version but the same weights.
    shutil.copytree(models / "cnn", models / "again")
    card_file = models / "again" / "card.json"
    recorded = json.loads(card_file.read_text(encoding="utf-8"))
    recorded.update(name="again", version="recalibrated")
    card_file.write_text(json.dumps(recorded), encoding="utf-8")
    with pytest.raises(EnsembleError, match="again and old / cnn are the same weights"):
        build_ensemble(_ensemble_of(models, "old", "again"))
    with pytest.raises(EnsembleError, match="an ensemble needs at least two members"):
        build_ensemble(_ensemble_of(models, "old"))


def test_a_run_from_a_trained_model_ships_the_average_of_its_epochs(tmp_path: Path) -> None:
    first = train(_request(tmp_path, "cnn", Balance.CLASS_WEIGHT, epochs=1))
    again = replace(
        _request(tmp_path / "again", "cnn", Balance.CLASS_WEIGHT, epochs=3),
        init_from=tmp_path / "cnn",
        average_from_epoch=2,
    )
    card = train(again)
    _check_run(tmp_path / "again" / "cnn", card, "cnn", epochs=3)
    assert card.training["started_from"] == {
        "model": "cnn",
        "version": first.version,
        "member": None,
    }
    # 6 training images make one batch for gathering the normalisation statistics again.
    assert card.training["weight_averaging"] == {
        "from_epoch": 2,
        "epochs_averaged": 2,
        "batch_norm_batches": 1,
    }

    with pytest.raises(TrainError, match="between 1 and 3, not 4"):
        train(replace(again, average_from_epoch=4))
    # A model validated on other images may have trained on this run's validation part.
    split = tmp_path / "cnn" / SPLIT_FILE
    rows = _split_rows(tmp_path / "cnn")
    flipped = {"train": "validation", "validation": "train"}
    with split.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "subset": flipped[r["subset"]]} for r in rows)
    with pytest.raises(TrainError, match="validated on other images"):
        train(again)


def test_recalibrating_starts_from_the_raw_threshold(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, card = seed_rnn
    copy = tmp_path / "seed-rnn"
    shutil.copytree(folder, copy)
    argv = ["--config", str(CONFIG), "calibrate", "--model", str(copy), "--data", str(FIXTURES)]
    assert main(argv) == 0
    assert f"threshold {card.threshold:.3f}" in capsys.readouterr().out
    again = read_card(copy)
    # The study's RNN was trained without augmentation: fitted on the images as they are.
    assert again.calibration["fitted_on"].endswith("trained without augmentation)")
    assert again.calibration["uncalibrated_threshold"] == card.calibration["uncalibrated_threshold"]
    assert again.threshold == pytest.approx(card.threshold)
    assert again.validation["confusion_matrix"] == card.validation["confusion_matrix"]


def test_smote_synthesises_from_the_training_part_only() -> None:
    images = load_images(discover(FIXTURES), SIZE)
    train_index, validation_index = split_by_patient(images.samples, FRACTION, SEED)
    training, validation = images.subset(train_index), images.subset(validation_index)
    validation_before = validation.pixels.copy()

    pixels, labels, weights = balance(training.pixels, training.labels, Balance.SMOTE, SEED)

    assert weights is None
    np.testing.assert_array_equal(validation.pixels, validation_before)
    assert np.bincount(labels).tolist() == [4, 4]
    real = len(training.pixels)
    np.testing.assert_array_equal(pixels[:real], training.pixels)
    synthetic = pixels[real:]
    assert (labels[real:] == CLASSES.index("NORMAL")).all()
    normals = training.pixels[training.labels == CLASSES.index("NORMAL")]
    for image in synthetic:
        assert not any(np.array_equal(image, other) for other in images.pixels)
        # SMOTE interpolates between the two NORMAL training images, pixel by pixel.
        assert (image >= normals.min(axis=0) - 1e-6).all()
        assert (image <= normals.max(axis=0) + 1e-6).all()


def _kermany_samples() -> list[Sample]:
    """Several images per patient in each of the collection's naming schemes."""
    names = []
    for n in range(1, 31):
        names += [(f"person{n}_bacteria_{3 * n}.jpeg", 1), (f"person{n}_virus_{3 * n + 1}.jpeg", 1)]
    for n in range(1, 16):
        names += [(f"IM-{n:04d}-0001.jpeg", 0), (f"IM-{n:04d}-0001-0002.jpeg", 0)]
        names += [(f"NORMAL2-IM-{n:04d}-0001.jpeg", 0), (f"NORMAL2-IM-{n:04d}-0002.jpeg", 0)]
    return [
        Sample(Path(CLASSES[label]) / name, label, patient_key(Path(name))) for name, label in names
    ]


def test_kermany_file_names_give_patient_keys() -> None:
    assert patient_key(Path("person7_bacteria_21.jpeg")) == "person7"
    assert patient_key(Path("person7_virus_22.jpeg")) == "person7"
    assert patient_key(Path("IM-0007-0001-0002.jpeg")) == "IM-0007"
    assert patient_key(Path("NORMAL2-IM-0007-0001.jpeg")) == "NORMAL2-IM-0007"
    assert len({s.patient for s in _kermany_samples()}) == 30 + 15 + 15


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_no_patient_on_both_sides_of_the_split(seed: int) -> None:
    samples = _kermany_samples()
    train_index, validation_index = split_by_patient(samples, 0.2, seed)
    assert sorted([*train_index, *validation_index]) == list(range(len(samples)))
    train_patients = {samples[i].patient for i in train_index}
    validation_patients = {samples[i].patient for i in validation_index}
    assert not train_patients & validation_patients
    assert 0.1 < len(validation_index) / len(samples) < 0.3
    assert {samples[i].label for i in validation_index} == {0, 1}


def test_threshold_is_the_most_specific_reaching_the_target_sensitivity() -> None:
    # The threshold lies midway between the score that reaches the target and the next one.
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.3, 0.35, 0.4, 0.6, 0.65, 0.8])
    assert choose_threshold(labels, scores, 0.5) == pytest.approx(0.5)
    assert choose_threshold(labels, scores, 0.75) == pytest.approx(0.375)
    assert choose_threshold(labels, scores, 1.0) == pytest.approx(0.2)
    # Consecutive positives: a vertical stretch of the ROC curve must not be skipped.
    labels = np.array([0, 0, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert choose_threshold(labels, scores, 0.6) == pytest.approx(0.65)
    for target in (0.5, 0.6, 0.8, 1.0):
        threshold = choose_threshold(labels, scores, target)
        assert (scores[labels == 1] >= threshold).mean() >= target


def test_threshold_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([1, 1]), np.array([0.2, 0.9]), 0.9)


def test_figures_match_a_hand_computed_confusion_matrix() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.05, 0.45, 0.75, 0.35, 0.65, 0.85, 0.95])
    figures = evaluate_predictions(labels, scores, threshold=0.5)
    # Predicted positive: 0.75 (a false positive), 0.65, 0.85, 0.95; 0.35 is missed.
    assert figures["confusion_matrix"] == [[2, 1], [1, 3]]
    assert figures["n"] == 7
    assert figures["accuracy"] == pytest.approx(5 / 7)
    assert figures["sensitivity"] == pytest.approx(3 / 4)
    assert figures["specificity"] == pytest.approx(2 / 3)
    normal, pneumonia = figures["per_class"]["NORMAL"], figures["per_class"]["PNEUMONIA"]
    assert (normal["precision"], normal["recall"], normal["support"]) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        3,
    )
    assert (pneumonia["precision"], pneumonia["recall"], pneumonia["f1"]) == (
        pytest.approx(3 / 4),
        pytest.approx(3 / 4),
        pytest.approx(3 / 4),
    )
    assert figures["macro_avg"]["f1"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert figures["weighted_avg"]["precision"] == pytest.approx((3 * 2 / 3 + 4 * 3 / 4) / 7)
    # 9 of the 12 (pneumonia, normal) pairs are ranked the right way round.
    assert figures["auc"] == pytest.approx(9 / 12)
    # Every image in its own bin: the mean of |label - score|.
    assert figures["ece"] == pytest.approx(2.45 / 7)


def test_expected_calibration_error_on_shared_bins() -> None:
    # Bins [0, .1): one normal at .05; [.1, .2): .15 twice, half pneumonia; [.9, 1]: .95.
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.05, 0.15, 0.15, 0.95])
    assert expected_calibration_error(labels, scores) == pytest.approx(
        0.25 * 0.05 + 0.5 * 0.35 + 0.25 * 0.05
    )
    # A quarter of the .25 images and three quarters of the .75 images are pneumonia.
    calibrated = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(calibrated, np.repeat([0.25, 0.75], 4)) == pytest.approx(0)


def test_model_card_round_trip() -> None:
    card = ModelCard(
        name="cnn-test",
        version="20261122-abcdef12",
        architecture="cnn",
        input_size=150,
        threshold=0.42,
        description="five convolution blocks",
        training={"epochs_run": 3, "epoch_seconds": [4.5, 2.0, 2.1]},
        validation={"n": 7, "confusion_matrix": [[2, 1], [1, 3]]},
    )
    restored = ModelCard.from_json(card.to_json())
    assert restored == card
    assert restored.classes == ("NORMAL", "PNEUMONIA") and restored.positive_index == 1
    assert (restored.label_for(0.42), restored.label_for(0.4199)) == ("PNEUMONIA", "NORMAL")
    data = json.loads(card.to_json()) | {"weights": "x"}
    with pytest.raises(ModelError, match="weights"):
        ModelCard.from_json(json.dumps(data))


def test_evaluate_command_reports_json_and_writes_plots(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, card = seed_rnn
    plots = tmp_path / "plots"
    argv = ["--config", str(CONFIG), "evaluate", "--data", str(FIXTURES), "--model", str(folder)]
    assert main([*argv, "--format", "json", "--out", str(plots)]) == 0
    record = json.loads(capsys.readouterr().out)

    assert (record["model"], record["model_version"]) == (card.name, card.version)
    assert record["n"] == 12 and record["threshold"] == card.threshold
    (tn, fp), (fn, tp) = record["confusion_matrix"]
    assert (tn + fp, fn + tp) == (5, 7)
    assert record["accuracy"] == pytest.approx((tn + tp) / 12)
    assert record["sensitivity"] == pytest.approx(tp / 7)
    assert record["specificity"] == pytest.approx(tn / 5)
    assert record["per_class"]["PNEUMONIA"]["support"] == 7
    assert 0 <= record["auc"] <= 1 and 0 <= record["ece"] <= 1
    images = load_images(discover(FIXTURES), SIZE)
    expected = evaluate_predictions(
        images.labels, load_model(folder.parent, folder.name).predict(images.pixels), card.threshold
    )
    assert record["auc"] == pytest.approx(expected["auc"])
    names = {Path(p).name for p in record["plots"]}
    assert names == {
        "training_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
        "calibration.png",
    }
    for name in names:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "confusion matrix" in table and "macro average" in table and card.version in table


def test_evaluate_command_reads_a_labels_csv(
    seed_rnn: tuple[Path, ModelCard], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = seed_rnn
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label\n"
        "NORMAL/IM-0115-0001.jpeg,normal\n"
        "PNEUMONIA/person1001_bacteria_2932.jpeg,PNEUMONIA\n"
        "PNEUMONIA/person1004_virus_1686.jpeg,Pneumonia\n",
        encoding="utf-8",
    )
    argv = ["--config", str(CONFIG), "evaluate", "--data", str(FIXTURES), "--labels", str(labels)]
    assert main([*argv, "--model", str(folder), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 3
    assert [sum(row) for row in record["confusion_matrix"]] == [1, 2]


class _CapturedError(Exception):
    """Raised by a stand-in for train() once it has the request: the run itself is tested
    elsewhere, here only what reaches it."""


def _capture(seen: list[TrainRequest]) -> Callable[[TrainRequest], ModelCard]:
    def capture(request: TrainRequest) -> ModelCard:
        seen.append(request)
        raise _CapturedError

    return capture


def test_compare_trains_with_the_requested_mixup_smoothing_and_augmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[TrainRequest] = []
    monkeypatch.setattr("training.compare.train", _capture(seen))
    strong = AUGMENTATIONS["strong"].model_dump()
    request = replace(
        _comparison(tmp_path),
        augmentation_name="strong",
        augmentation=strong,
        mixup=0.3,
        label_smoothing=0.1,
    )
    with pytest.raises(_CapturedError):
        run_all(request)
    assert (seen[0].augmentation_name, seen[0].augmentation) == ("strong", strong)
    assert (seen[0].mixup, seen[0].label_smoothing) == (0.3, 0.1)


def test_train_command_passes_its_options_or_the_configured_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[TrainRequest] = []
    monkeypatch.setattr("training.train.train", _capture(seen))
    command = ["--config", str(CONFIG), "train", "--architecture", "cnn", "--out", str(tmp_path)]
    options = ["--augmentation", "strong", "--mixup", "0.3", "--label-smoothing", "0.1"]
    with pytest.raises(_CapturedError):
        main([*command, *options])
    monkeypatch.setenv("PNEUMOTRIAGE_TRAINING_MIXUP", "0.2")
    monkeypatch.setenv("PNEUMOTRIAGE_TRAINING_LABEL_SMOOTHING", "0.05")
    with pytest.raises(_CapturedError):
        main(command)
    given, configured = seen
    assert (given.augmentation_name, given.mixup, given.label_smoothing) == ("strong", 0.3, 0.1)
    assert given.augmentation == AUGMENTATIONS["strong"].model_dump()
    assert (configured.augmentation_name, configured.mixup) == ("standard", 0.2)
    assert (configured.label_smoothing, configured.augmentation) == (0.05, STANDARD)


def test_evaluate_command_explains_a_missing_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(CONFIG), "evaluate", "--data", str(FIXTURES), "--model", "no-such"]
    assert main(argv) == 2
    assert "no model 'no-such'" in capsys.readouterr().err


def _comparison(workdir: Path) -> CompareRequest:
    return CompareRequest(
        data=FIXTURES,
        architectures=("seed-rnn",),
        balances=(Balance.SMOTE, Balance.NONE),
        workdir=workdir,
        seed=SEED,
        validation_fraction=FRACTION,
        target_sensitivity=0.9,
        input_size=SIZE,
        command="pneumotriage compare --architectures seed-rnn --epochs 1",
        calibration_copies=0,
        augmentation_name="standard",
        augmentation=STANDARD,
        mixup=0.0,
        label_smoothing=0.0,
        epochs=1,
    )


def test_comparison_table_has_a_row_per_run_and_the_smote_effect(tmp_path: Path) -> None:
    request = _comparison(tmp_path)
    runs = run_all(request)
    assert [(r.architecture, r.balance) for r in runs] == [
        ("seed-rnn", Balance.SMOTE),
        ("seed-rnn", Balance.NONE),
    ]
    assert [r.card.training["after_balancing"] for r in runs] == [8, 6]
    markdown = comparison_markdown(request, runs, when=datetime.now(UTC))
    assert f"`{request.command}`" in markdown
    assert (
        "- training: augmentation `standard` (for the architectures that augment), mixup 0.0,"
        " label smoothing 0.0"
    ) in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| seed-rnn |")]
    assert len(rows) == 3
    smote, plain = runs
    auc_gain = smote.card.validation["auc"] - plain.card.validation["auc"]
    assert rows[2].split(" | ")[1] == f"{auc_gain:+.3f}"


def test_seconds_per_epoch_leaves_out_the_compiling_first_epoch() -> None:
    assert seconds_per_epoch([30.0, 4.0, 6.0, 5.0]) == 5.0
    assert seconds_per_epoch([30.0]) == 30.0
    assert seconds_per_epoch([]) is None

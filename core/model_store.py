"""Shipped models: where they live, what their cards promise, and how they are run.

A model is a folder `models/<name>/` holding `model.keras` and `card.json`. The card is the
contract between training and the service: input size, class order, the operating
threshold chosen on validation data, and the figures and command that back them. Keras and
TensorFlow are imported only here and only when a model is loaded, so the DICOM node and the
report job start without them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import Calibration
from core.content_check import ContentCheck, ContentCheckError
from core.content_check import load as load_content_check
from core.keras_import import import_keras

MODEL_FILE = "model.keras"
CARD_FILE = "card.json"


class ModelError(Exception):
    """A model cannot be found or does not match its card."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    architecture: str
    input_size: int
    threshold: float
    classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
    positive_class: str = "PNEUMONIA"
    description: str = ""
    threshold_rule: str = ""
    command: str = ""
    created_at: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    # core.content_check: its limits, how they were set, and the digest of its arrays.
    content_check: dict[str, Any] = field(default_factory=dict)
    # core.calibration: the map from raw scores to the probabilities shown and thresholded,
    # and the figures it was judged by; `threshold` is on the calibrated scale.
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    def label_for(self, probability: float, threshold: float | None = None) -> str:
        """The operating point: at or above the threshold (the card's unless a site has set
        its own, core.site_threshold) is the positive class."""
        negatives = [c for c in self.classes if c != self.positive_class]
        limit = self.threshold if threshold is None else threshold
        return self.positive_class if probability >= limit else negatives[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data["classes"] = tuple(data.get("classes", cls.classes))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model card has unknown fields: {', '.join(unknown)}")
        return cls(**data)


def weights_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def available_models(models_directory: Path) -> list[str]:
    return sorted(p.name for p in models_directory.glob("*") if (p / CARD_FILE).is_file())


def model_dir(models_directory: Path, name_or_path: str) -> Path:
    """A shipped model by name, or any folder holding a model and its card."""
    candidate = Path(name_or_path)
    folder = candidate if candidate.is_dir() else models_directory / name_or_path
    if not (folder / MODEL_FILE).is_file() or not (folder / CARD_FILE).is_file():
        shipped = available_models(models_directory)
        raise ModelError(
            f"no model {name_or_path!r}: expected {MODEL_FILE} and {CARD_FILE} in {folder}"
            f" (shipped models: {', '.join(shipped) or 'none'})"
        )
    return folder


def read_card(folder: Path) -> ModelCard:
    return ModelCard.from_json((folder / CARD_FILE).read_text(encoding="utf-8"))


def positive_probabilities(
    keras_model: Any, pixels: np.ndarray, positive_index: int, batch_size: int = 64
) -> np.ndarray:
    """Probability of the positive class for images (n, s, s), in fixed-size batches.

    `predict_on_batch` runs the compiled inference function: calling the model directly
    executes eagerly and is up to a hundred times slower on a CPU. Training computes its card
    figures with this same function, so the threshold on the card and the service's scores
    come from identical arithmetic.
    """
    batch = pixels[..., np.newaxis].astype(np.float32, copy=False)
    outputs = [
        np.asarray(keras_model.predict_on_batch(batch[start : start + batch_size]))
        for start in range(0, len(batch), batch_size)
    ]
    if not outputs:
        return np.zeros(0)
    return np.concatenate(outputs)[:, positive_index].astype(np.float64)


class LoadedModel:
    """A Keras model with its card; thread-safe inference for the scheduler's threads."""

    def __init__(
        self, card: ModelCard, keras_model: Any, content: ContentCheck | None = None
    ) -> None:
        self.card = card
        self._model = keras_model
        self._lock = threading.Lock()
        self.content = content
        self.calibration = Calibration.from_card(card.calibration)

    def refusal(self, pixels: np.ndarray) -> str | None:
        """Why a converted image (s, s) must not be scored, judged from its pixels
        (core.content_check), or None; a model without a fitted check refuses nothing."""
        return None if self.content is None else self.content.refusal(pixels)

    @property
    def keras_model(self) -> Any:
        """For core.heatmap, which compiles its own function on the same weights."""
        return self._model

    def predict(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Calibrated probability of the positive class for converted images (n, s, s)."""
        size = self.card.input_size
        if pixels.ndim != 3 or pixels.shape[1:] != (size, size):
            raise ModelError(f"expected images of {size}x{size}, got {pixels.shape}")
        with self._lock:
            raw = positive_probabilities(self._model, pixels, self.card.positive_index, batch_size)
        return self.calibration.apply(raw)


_cache: dict[Path, LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model(models_directory: Path, name_or_path: str) -> LoadedModel:
    """Load once per process; later calls with the same model return the same object."""
    folder = model_dir(models_directory, name_or_path).resolve()
    with _cache_lock:
        if folder not in _cache:
            keras = import_keras()
            card = read_card(folder)
            if not zipfile.is_zipfile(folder / MODEL_FILE):
                # Keras would call it "File not found", which sends one looking elsewhere.
                raise ModelError(
                    f"{folder.name}: {MODEL_FILE} does not load: it is not a .keras archive"
                    " (a truncated copy, or another kind of file)"
                )
            try:
                keras_model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
            except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
                # A truncated copy, a file of another kind, layers this Keras does not
                # know: said in one line, as a fault of the installation.
                raise ModelError(f"{folder.name}: {MODEL_FILE} does not load: {exc}") from None
            expected = (None, card.input_size, card.input_size, 1)
            if tuple(keras_model.input_shape) != expected:
                raise ModelError(
                    f"{folder.name}: model input {keras_model.input_shape} does not match"
                    f" its card ({card.input_size}x{card.input_size}x1)"
                )
            content = None
            if card.content_check:
                try:
                    content = load_content_check(folder, card.content_check)
                except ContentCheckError as exc:
                    raise ModelError(f"{folder.name}: content check: {exc}") from None
            _cache[folder] = LoadedModel(card, keras_model, content)
        return _cache[folder]

"""Writing a model folder: operating point, version, card, and an atomic swap into place.

Shared by `train` and `ensemble` so that every shipped model is published the same way: a
half-written folder never replaces a working model.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.calibration import Calibration
from core.model_store import CARD_FILE, MODEL_FILE, ModelCard, weights_digest
from training.metrics import choose_threshold


def operating_point(
    labels: np.ndarray, probabilities: np.ndarray, target_sensitivity: float, fixed: float | None
) -> tuple[float, str]:
    """The threshold and the rule that chose it, in words for the card."""
    if fixed is not None:
        return fixed, f"fixed at {fixed} by the training command"
    threshold = choose_threshold(labels, probabilities, target_sensitivity)
    return threshold, (
        f"highest threshold reaching sensitivity >= {target_sensitivity} "
        "on the patient-level validation split"
    )


def new_workdir(output: Path) -> Path:
    """A hidden folder beside the destination, so the final rename stays on one file system."""
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    workdir.chmod(0o755)
    return workdir


def version_of(workdir: Path, calibration: Calibration | None = None) -> str:
    """Date and digest of what decides a score: the weights and, once fitted, the
    calibration, so that a recalibrated model is a new version and a site threshold set on
    the old scale (core.site_threshold, kept per version) no longer applies to it."""
    digest = weights_digest(workdir / MODEL_FILE)
    if calibration is not None:
        mapping = f"{digest}:{calibration.a!r}:{calibration.b!r}:{calibration.c!r}"
        digest = hashlib.sha256(mapping.encode()).hexdigest()
    return f"{datetime.now(UTC):%Y%m%d}-{digest[:8]}"


def created_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_card(folder: Path, card: ModelCard) -> None:
    (folder / CARD_FILE).write_text(card.to_json(), encoding="utf-8")


def publish(workdir: Path, output: Path) -> None:
    """Put the finished folder in place of `output`: its model, calibration and content
    check replace the previous ones together, so a fit that fails leaves the old model."""
    if output.exists():
        shutil.rmtree(output)
    workdir.rename(output)

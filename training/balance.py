"""Class balancing of the training part only; validation and test data are never touched."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.utils.class_weight import compute_class_weight


class Balance(StrEnum):
    SMOTE = "smote"
    CLASS_WEIGHT = "class-weight"
    NONE = "none"


def balance(
    pixels: np.ndarray, labels: np.ndarray, method: Balance, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[int, float] | None]:
    """Return training images, labels and optional class weights for Keras' `fit`.

    SMOTE interpolates between a minority image and one of its k nearest minority
    neighbours on the flattened pixels, as the research did; the synthetic images are
    appended after the real ones.
    """
    if method is Balance.NONE:
        return pixels, labels, None
    classes = np.unique(labels)
    if method is Balance.CLASS_WEIGHT:
        weights = compute_class_weight("balanced", classes=classes, y=labels)
        return pixels, labels, {int(c): float(w) for c, w in zip(classes, weights, strict=True)}
    minority = int(np.bincount(labels).min())
    if minority < 2:
        raise ValueError("SMOTE needs at least two images of the smaller class")
    sampler = SMOTE(random_state=seed, k_neighbors=min(5, minority - 1))
    flat, resampled_labels = sampler.fit_resample(pixels.reshape(len(pixels), -1), labels)
    return flat.reshape(-1, *pixels.shape[1:]).astype(np.float32), resampled_labels, None

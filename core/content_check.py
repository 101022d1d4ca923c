"""Does an image look like a frontal chest radiograph at all? Judged from its pixels.

Tag-based selection (core/selection.py) cannot see a screenshot, a photograph, a CT slice
exported as a secondary capture, a lateral or upside-down view with wrong tags, or a blank
or saturated image; the model then scores whatever it is given ("PNEUMONIA 0.754" for a
screenshot of the report). So, before the model, the converted input itself is judged in
two ways against the training radiographs:

* its distance from them: its layout (the mean of each cell of a 24 x 24 grid, which places
  the lungs, mediastinum, diaphragm and shoulders), its grey levels (a 32-bin histogram)
  and its texture, by Mahalanobis's distance with a Ledoit-Wolf covariance, which weighs
  each direction by how much real chest films vary along it;
* its orientation: children's films vary so much in field of view that a film upside down
  is not far from the others (the distance alone refuses only about a third of them, as
  benchmarks/content_check.py shows), so a logistic
  regression, trained to tell the training images from the same images upside down (the
  self-supervised orientation task of Hendrycks et al., 2019), must find it upright.

Each limit is set on the validation split so that together they pass at least 99.5% of its
radiographs; what fails is rejected with its score and the limit.

It depends on the model's input only (size and conversion), not on its weights, so it is
fitted once per model folder (`pneumotriage content-check`) and stored beside the model:
the arrays in `content_check.npz`, the limit and how it was set in the model card.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PARAMETERS_FILE = "content_check.npz"
GRID = 24
HISTOGRAM_BINS = 32
# The orientation model reads a coarser grid: the lungs' and diaphragm's places, not detail.
ORIENTATION_GRID = 12
# Each part may refuse this share of the validation radiographs, so that together they
# pass at least 99.5% of them.
VALIDATION_REFUSED_EACH = 0.0025
METHOD = (
    f"Mahalanobis distance (Ledoit-Wolf covariance of the training images) of {GRID}x{GRID}"
    f" cell means, a {HISTOGRAM_BINS}-bin histogram and the fine texture of the model input;"
    f" and a logistic regression telling training images from the same images upside down,"
    f" on {ORIENTATION_GRID}x{ORIENTATION_GRID} cell means standardised per image"
)
REFUSAL = "does not look like a frontal chest radiograph"
# Below this standard deviation (of grey levels in 0..1) an image is blank: it has no
# structure for the distance or the orientation to judge (a black image is as near the
# films' mean as a dark film). Real radiographs lie far above: about 0.2.
MIN_CONTRAST = 0.02


class ContentCheckError(Exception):
    """The stored parameters are missing or do not match the card."""


def _cells(images: np.ndarray, grid: int) -> np.ndarray:
    size = images.shape[1]
    edges = np.linspace(0, size, grid + 1).astype(int)
    counts = np.diff(edges)
    sums = np.add.reduceat(np.add.reduceat(images, edges[:-1], axis=1), edges[:-1], axis=2)
    return (sums / (counts[:, None] * counts[None, :])).reshape(len(images), -1)


def features(pixels: np.ndarray) -> np.ndarray:
    """What the distance reads, per converted image (n, s, s) in 0..1: the layout (cell
    means), the grey levels (histogram) and the texture (mean difference of neighbouring
    pixels down and across), which tells noise from film."""
    images = np.asarray(pixels, dtype=np.float64)
    bins = np.clip((images * HISTOGRAM_BINS).astype(int), 0, HISTOGRAM_BINS - 1)
    flat = bins.reshape(len(images), -1)
    histograms = np.stack([np.bincount(row, minlength=HISTOGRAM_BINS) for row in flat])
    texture = np.stack(
        [
            np.abs(np.diff(images, axis=1)).mean(axis=(1, 2)),
            np.abs(np.diff(images, axis=2)).mean(axis=(1, 2)),
        ],
        axis=1,
    )
    return np.hstack([_cells(images, GRID), histograms / flat.shape[1], texture])


def layout(pixels: np.ndarray) -> np.ndarray:
    """Cell means standardised per image, for the orientation model: where it is bright,
    whatever the exposure."""
    cells = _cells(np.asarray(pixels, dtype=np.float64), ORIENTATION_GRID)
    spread = cells.std(axis=1, keepdims=True) + 1e-3
    return (cells - cells.mean(axis=1, keepdims=True)) / spread


@dataclass(frozen=True)
class ContentCheck:
    mean: np.ndarray
    precision: np.ndarray
    limit: float
    orientation_weights: np.ndarray
    orientation_bias: float
    orientation_limit: float

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Distance from the training radiographs, for each image (n, s, s)."""
        offset = features(pixels) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", offset, self.precision, offset), 0))

    def upright(self, pixels: np.ndarray) -> np.ndarray:
        """How likely each image is the right way up, 0..1."""
        return 1 / (
            1 + np.exp(-(layout(pixels) @ self.orientation_weights + self.orientation_bias))
        )

    def refusal(self, pixels: np.ndarray) -> str | None:
        """The reason to reject one converted image (s, s), or None when it passes."""
        spread = float(np.std(pixels))
        if spread < MIN_CONTRAST:
            return f"{REFUSAL} (blank: grey levels vary by {spread:.3f}, at least {MIN_CONTRAST})"
        batch = pixels[np.newaxis]
        score = float(self.scores(batch)[0])
        if score > self.limit:
            return f"{REFUSAL} (score {score:.0f}, limit {self.limit:.0f})"
        upright = float(self.upright(batch)[0])
        if upright < self.orientation_limit:
            return (
                f"{REFUSAL} (upright {upright:.2f}, limit {self.orientation_limit:.2f}:"
                " upside down, or not a chest film)"
            )
        return None


def fit(train: np.ndarray, validation: np.ndarray) -> tuple[ContentCheck, float]:
    """The check fitted on training images, its limits from the validation images; and the
    share of the validation radiographs it passes."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    estimate = LedoitWolf().fit(features(train))
    upside_down = train[:, ::-1, :]
    orientation = LogisticRegression(max_iter=2000).fit(
        np.vstack([layout(train), layout(upside_down)]),
        np.r_[np.ones(len(train)), np.zeros(len(upside_down))],
    )
    # The limits are set with the arrays as stored (float32), so that the service, which
    # reads them back, passes exactly the share of validation images the card says.
    stored = [
        np.asarray(a, np.float32).astype(np.float64)
        for a in (estimate.location_, estimate.precision_, orientation.coef_[0])
    ]
    unlimited = ContentCheck(
        stored[0], stored[1], np.inf, stored[2], float(orientation.intercept_[0]), 0.0
    )
    limit = np.quantile(unlimited.scores(validation), 1 - VALIDATION_REFUSED_EACH, method="higher")
    orientation_limit = np.quantile(
        unlimited.upright(validation), VALIDATION_REFUSED_EACH, method="lower"
    )
    check = ContentCheck(
        unlimited.mean,
        unlimited.precision,
        float(limit),
        unlimited.orientation_weights,
        unlimited.orientation_bias,
        float(orientation_limit),
    )
    passed = np.mean([check.refusal(image) is None for image in validation])
    return check, float(passed)


def save(check: ContentCheck, folder: Path) -> str:
    """Write the arrays beside the model; return their SHA-256 for the card."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        mean=check.mean.astype(np.float32),
        precision=check.precision.astype(np.float32),
        orientation_weights=check.orientation_weights.astype(np.float32),
    )
    data = buffer.getvalue()
    (folder / PARAMETERS_FILE).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def load(folder: Path, entry: dict[str, Any]) -> ContentCheck:
    """The check a model card describes, its arrays verified against the card's digest."""
    path = folder / PARAMETERS_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContentCheckError(f"{path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ContentCheckError(f"{path} does not match its model card (sha256)")
    with np.load(io.BytesIO(data)) as arrays:
        return ContentCheck(
            arrays["mean"].astype(np.float64),
            arrays["precision"].astype(np.float64),
            float(entry["limit"]),
            arrays["orientation_weights"].astype(np.float64),
            float(entry["orientation_bias"]),
            float(entry["orientation_limit"]),
        )

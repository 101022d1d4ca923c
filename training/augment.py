"""Training-time augmentation as a Keras layer written in `keras.ops` only.

Written against the backend-neutral ops so the same code runs inside TensorFlow's graph on a
CPU and inside JAX's compiled train step on a GPU, where Keras' own random preprocessing
layers run far slower. It wraps the model during training only; the saved model never
contains it.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


class RandomRadiograph(keras.layers.Layer):
    """Small rotations, shifts and zoom, plus contrast (gamma) and brightness changes: the
    variation between departments' exposures and positioning."""

    def __init__(
        self,
        rotation_degrees: float = 10.0,
        shift_fraction: float = 0.08,
        zoom_fraction: float = 0.12,
        gamma_range: float = 0.35,
        brightness: float = 0.08,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation = math.radians(rotation_degrees)
        self.shift = shift_fraction
        self.zoom = zoom_fraction
        self.gamma_range = gamma_range
        self.brightness = brightness
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch: Any, low: float, high: float) -> Any:
        return keras.random.uniform((batch,), low, high, seed=self.generator)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        batch = ops.shape(images)[0]
        height = ops.cast(ops.shape(images)[1], "float32")
        width = ops.cast(ops.shape(images)[2], "float32")
        angle = self._uniform(batch, -self.rotation, self.rotation)
        scale = self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom)
        dx = self._uniform(batch, -self.shift, self.shift) * width
        dy = self._uniform(batch, -self.shift, self.shift) * height
        cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        # Output pixel (x, y) samples the input at A (x - c) + c - d (rotation about the centre).
        transform = ops.stack(
            [
                cos,
                -sin,
                cx - cos * cx + sin * cy - dx,
                sin,
                cos,
                cy - sin * cx - cos * cy - dy,
                ops.zeros_like(cos),
                ops.zeros_like(cos),
            ],
            axis=1,
        )
        moved = ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode="nearest"
        )
        gamma = ops.exp(self._uniform(batch, -self.gamma_range, self.gamma_range))
        shift = self._uniform(batch, -self.brightness, self.brightness)
        adjusted = ops.power(ops.clip(moved, 0.0, 1.0), gamma[:, None, None, None])
        return ops.clip(adjusted + shift[:, None, None, None], 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "rotation_degrees": math.degrees(self.rotation),
            "shift_fraction": self.shift,
            "zoom_fraction": self.zoom,
            "gamma_range": self.gamma_range,
            "brightness": self.brightness,
            "seed": self.seed,
        }

"""Training-time augmentation as a Keras layer written in `keras.ops` only.

Written against the backend-neutral ops so the same code runs inside TensorFlow's graph on a
CPU and inside JAX's compiled train step on a GPU, where Keras' own random preprocessing
layers run far slower. It wraps the model during training only; the saved model never
contains it.

What it varies is what differs between departments and what a model could otherwise use as
a shortcut: positioning (rotation, shift, zoom), the aspect ratio the original radiograph had
before it was squeezed square, the exposure curve (gamma), sharpness and noise. Every image
ends stretched to its own 0..1 range, as the service's conversion leaves it. How far each
varies is configuration (`[training.augmentations]` in config.toml).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


class RandomRadiograph(keras.layers.Layer):
    """The strengths have no defaults here: they come from `[training.augmentations]` and
    are recorded in the card, which the calibration reads back (training.calibration)."""

    def __init__(
        self,
        rotation_degrees: float,
        shift_fraction: float,
        zoom_fraction: float,
        aspect_fraction: float,
        gamma_range: float,
        sharpness: float,
        noise: float,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation = math.radians(rotation_degrees)
        self.shift = shift_fraction
        self.zoom = zoom_fraction
        self.aspect = aspect_fraction
        self.gamma_range = gamma_range
        self.sharpness = sharpness
        self.noise = noise
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch: Any, low: float, high: float) -> Any:
        return keras.random.uniform((batch,), low, high, seed=self.generator)

    def _geometry(self, images: Any, batch: Any) -> Any:
        height = ops.cast(ops.shape(images)[1], "float32")
        width = ops.cast(ops.shape(images)[2], "float32")
        angle = self._uniform(batch, -self.rotation, self.rotation)
        scale = self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom)
        aspect = self._uniform(batch, 1.0 - self.aspect, 1.0 + self.aspect)
        scale_x, scale_y = scale * aspect, scale / aspect
        dx = self._uniform(batch, -self.shift, self.shift) * width
        dy = self._uniform(batch, -self.shift, self.shift) * height
        cos, sin = ops.cos(angle), ops.sin(angle)
        a0, a1 = cos / scale_x, -sin / scale_x
        b0, b1 = sin / scale_y, cos / scale_y
        cx, cy = (width - 1) / 2, (height - 1) / 2
        # Output pixel p samples the input at A (p - c) + c - d: rotation and scaling about
        # the centre, then a shift.
        transform = ops.stack(
            [
                a0,
                a1,
                cx - a0 * cx - a1 * cy - dx,
                b0,
                b1,
                cy - b0 * cx - b1 * cy - dy,
                ops.zeros_like(cos),
                ops.zeros_like(cos),
            ],
            axis=1,
        )
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode="nearest"
        )

    def _sharpen_or_blur(self, images: Any, batch: Any) -> Any:
        """Unsharp masking with a random signed amount: negative blurs, positive sharpens."""
        kernel = ops.ones((3, 3, 1, 1), dtype="float32") / 9.0
        blurred = ops.conv(images, kernel, strides=1, padding="same")
        amount = self._uniform(batch, -self.sharpness, self.sharpness)[:, None, None, None]
        return images + amount * (images - blurred)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        batch = ops.shape(images)[0]
        x = ops.clip(self._geometry(images, batch), 0.0, 1.0)
        gamma = ops.exp(self._uniform(batch, -self.gamma_range, self.gamma_range))
        x = ops.power(x, gamma[:, None, None, None])
        x = self._sharpen_or_blur(x, batch)
        sigma = self._uniform(batch, 0.0, self.noise)[:, None, None, None]
        x = x + sigma * keras.random.normal(ops.shape(x), seed=self.generator)
        low = ops.min(x, axis=(1, 2, 3), keepdims=True)
        high = ops.max(x, axis=(1, 2, 3), keepdims=True)
        return (x - low) / ops.maximum(high - low, 1e-6)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "rotation_degrees": math.degrees(self.rotation),
            "shift_fraction": self.shift,
            "zoom_fraction": self.zoom,
            "aspect_fraction": self.aspect,
            "gamma_range": self.gamma_range,
            "sharpness": self.sharpness,
            "noise": self.noise,
            "seed": self.seed,
        }

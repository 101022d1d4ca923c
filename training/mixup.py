"""Mixup (Zhang et al., 2018): each training batch blended with a shuffled copy of itself.

Blending two radiographs and their labels in proportion teaches the model that a score
between the classes means a picture between them, which is meant to temper the
over-confidence measured on images unlike the training set. It is done here, on the host, on
whole batches in NumPy, because the labels must be blended with the pixels, which a layer
inside the model cannot reach, and so it runs under TensorFlow and JAX alike (not draw for
draw: TensorFlow reads a batch ahead to learn its shape). Keras' training-side accuracy and
AUC are of blended labels and mean little; the validation figures are of real ones.
"""

from __future__ import annotations

import math

import keras
import numpy as np


class MixupBatches(keras.utils.PyDataset):
    """Shuffled batches, each image i blended as lam * x_i + (1 - lam) * x_j with a
    partner j from the same batch and lam ~ Beta(alpha, alpha); targets and sample weights
    alike.

    Class weights become sample weights blended the same way: a blend of a weighted normal
    and a pneumonia counts as much as its parts.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        alpha: float,
        seed: int,
        class_weight: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.images = images
        self.targets = targets.astype(np.float32)
        self.batch_size = batch_size
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)
        self.weights = (
            None
            if class_weight is None
            else np.array([class_weight[int(c)] for c in targets.argmax(axis=1)], np.float32)
        )
        self.order = self.rng.permutation(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        share = self.rng.beta(self.alpha, self.alpha, len(rows)).astype(np.float32)
        partner = rows[self.rng.permutation(len(rows))]

        def blend(values: np.ndarray) -> np.ndarray:
            lam = share.reshape((-1,) + (1,) * (values.ndim - 1))
            return lam * values[rows] + (1 - lam) * values[partner]

        batch = (blend(self.images), blend(self.targets))
        return batch if self.weights is None else (*batch, blend(self.weights))

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))

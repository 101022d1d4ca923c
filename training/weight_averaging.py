"""Stochastic weight averaging (Izmailov et al., 2018) for a run at a constant learning rate.

The weights a run visits at a constant learning rate circle a minimum; their average sits
in a flatter part of the loss than any one of them, and a flat minimum moves less when the
images move away from the training set, which is the failure this project's model shows on
images from other hospitals. It costs no extra inference: the shipped model is one model.

Batch normalisation's moving statistics belong to the weights they were gathered under,
not to their average, so they are gathered again, with the average in place, over the
training images under the training augmentation (the statistics training itself saw).
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np


class WeightAveraging(keras.callbacks.Callback):
    """Keeps the running mean of a model's trainable weights at the end of each epoch from
    `from_epoch` (1-based) on; `apply` puts the mean in place of the last weights."""

    def __init__(self, network: keras.Model, from_epoch: int) -> None:
        super().__init__()
        self.network = network
        self.from_epoch = from_epoch
        self.mean: list[np.ndarray] = []
        self.averaged = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch + 1 < self.from_epoch:
            return
        weights = [np.asarray(v, dtype=np.float64) for v in self.network.trainable_variables]
        self.averaged += 1
        if self.averaged == 1:
            self.mean = weights
            return
        for mean, current in zip(self.mean, weights, strict=True):
            mean += (current - mean) / self.averaged

    def apply(self) -> int:
        """Assign the averaged weights; returns how many epochs' weights were averaged."""
        if not self.averaged:
            raise ValueError(f"no epoch reached {self.from_epoch}: nothing was averaged")
        for variable, mean in zip(self.network.trainable_variables, self.mean, strict=True):
            variable.assign(mean.astype(variable.dtype))
        return self.averaged


def _batch_norms(layer: keras.layers.Layer) -> Iterator[keras.layers.BatchNormalization]:
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _batch_norms(inner)


def recompute_batch_norm(
    network: keras.Model, images: np.ndarray, batch_size: int, seed: int
) -> int:
    """Gather every batch normalisation's moving mean and variance again as the mean over
    batches of `images` passed through `network` in training mode, each batch weighted by
    its size. Returns the number of batches (0 for a network without batch normalisation).

    The images are shuffled first, as training shuffles them: training data is stored by
    class (and SMOTE appends its synthetic images), and batches of one class would leave the
    spread between the classes out of the variance that training normalised with. A momentum
    of seen / (seen + batch) makes Keras' moving average the cumulative one; the first batch
    (momentum 0) replaces whatever statistics there were."""
    layers = list(_batch_norms(network))
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(images))
    seen = batches = 0
    try:
        for start in range(0, len(images), batch_size):
            batch = images[order[start : start + batch_size]]
            for layer in layers:
                layer.momentum = seen / (seen + len(batch))
            network(batch, training=True)
            seen += len(batch)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return batches

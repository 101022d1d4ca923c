"""Stochastic weight averaging's two computations, checked against numpy on small models."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.architectures import ARCHITECTURES
from training.train import EpochProgress, _callbacks
from training.weight_averaging import WeightAveraging, recompute_batch_norm


def _dense() -> keras.Model:
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def test_the_average_is_of_the_epochs_from_the_first_averaged_on() -> None:
    model = _dense()
    averaging = WeightAveraging(model, from_epoch=2)
    rng = np.random.default_rng(0)
    visited = []
    for epoch in range(4):
        weights = [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
        model.set_weights(weights)
        visited.append(weights)
        averaging.on_epoch_end(epoch)
    assert averaging.apply() == 3
    for index, variable in enumerate(model.trainable_variables):
        expected = np.mean([w[index] for w in visited[1:]], axis=0)
        np.testing.assert_allclose(np.asarray(variable), expected, rtol=1e-6)


def test_nothing_averaged_is_an_error_not_a_silent_last_epoch() -> None:
    averaging = WeightAveraging(_dense(), from_epoch=5)
    averaging.on_epoch_end(0)
    with pytest.raises(ValueError, match="no epoch reached 5"):
        averaging.apply()


def test_batch_norm_statistics_are_those_of_shuffled_batches_weighted_by_size() -> None:
    """Stored by class, two clusters far apart: batches taken in that order would each see
    one cluster and miss the spread between them. Shuffled, the gathered variance is close
    to the whole set's; the last, partial batch counts by its size."""
    inner = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False), inner])
    norm = inner.layers[0]
    rng = np.random.default_rng(1)
    images = np.concatenate([rng.normal(-5, 1, (300, 2)), rng.normal(5, 1, (305, 2))])
    images = images.astype("float32")

    assert recompute_batch_norm(network, images, batch_size=50, seed=3) == 13
    order = np.random.default_rng(3).permutation(len(images))
    features = np.asarray(network.layers[0](images[order]))
    batches = [features[i : i + 50] for i in range(0, len(features), 50)]
    sizes = np.array([len(b) for b in batches])[:, None]
    means = np.array([b.mean(0) for b in batches])
    variances = np.array([b.var(0) for b in batches])
    expected_mean = (means * sizes).sum(0) / sizes.sum()
    expected_variance = (variances * sizes).sum(0) / sizes.sum()
    np.testing.assert_allclose(np.asarray(norm.moving_mean), expected_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), expected_variance, rtol=1e-3)
    # Mixed batches: the variance between the clusters is in it (sorted batches: about 1).
    whole = features.var(0)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), whole, rtol=0.15)
    assert norm.momentum == pytest.approx(0.99)


def test_a_network_without_batch_normalisation_needs_no_pass() -> None:
    assert recompute_batch_norm(_dense(), np.zeros((10, 3), "float32"), 4, seed=0) == 0


def test_an_averaging_run_keeps_every_epoch_at_a_constant_rate(tmp_path: Path) -> None:
    """Early stopping would restore one epoch's weights over the average, and a learning
    rate cut would weight the average towards the last epochs."""
    spec = ARCHITECTURES["cnn-lstm"]
    averaging = WeightAveraging(_dense(), from_epoch=1)
    kinds = {type(c) for c in _callbacks(spec, EpochProgress(2), tmp_path, averaging)}
    assert kinds == {EpochProgress, keras.callbacks.CSVLogger, WeightAveraging}
    plain = {type(c) for c in _callbacks(spec, EpochProgress(2), tmp_path, None)}
    assert keras.callbacks.EarlyStopping in plain and WeightAveraging not in plain

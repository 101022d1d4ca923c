"""Grad-CAM maps of a model's pneumonia probability: a visual aid, not a localisation.

A map shows which parts of the last convolutional feature map raised the positive-class
probability (Selvaraju et al., 2017). Studies of such maps on chest radiographs found that
they often light up tubes, wires, markers and devices rather than the opacity a radiologist
looks for, so callers must show `core.heatmap_render.CAPTION` with every map.

Why Grad-CAM at the last convolutional map, and not at the input or inside the recurrent
head: the recurrent head reads the feature map row by row (or column by column) and mixes
everything it has read, so its states have no place in the image; the last feature map
still has one, and the gradient through the head says how much each of its channels
mattered. Models without a convolution (the seed RNN reads raw pixel rows) have no such
map, and get no heatmap rather than an invented one.

Cost: the convolutional features are computed once; the gradient is taken from the
probability back to those features through the head only (the LSTM and the last dense
layer), so a map costs little more than the forward pass that gives the probability, and the
same pass gives both. Everything runs in one compiled TensorFlow function with a fixed input
signature (traced once): eager execution would be many times slower on a CPU.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.calibration import Calibration
from core.model_store import LoadedModel, ModelCard, ModelError

# Layers whose output still has a place in the image and was learnt from it.
CONVOLUTIONS = frozenset({"Conv2D", "SeparableConv2D", "DepthwiseConv2D"})
# Layers after which a map's axes no longer follow the image's.
REORDERINGS = frozenset({"Permute"})


class NoHeatmapError(ModelError):
    """The model has nothing a map could be honestly computed from; the message says why."""


@dataclass(frozen=True)
class Explanation:
    """Probabilities exactly as `LoadedModel.predict` gives them, and one map per image."""

    probabilities: np.ndarray
    maps: np.ndarray


@dataclass(frozen=True)
class _Member:
    features: Any
    head: Any
    kernel: Any
    bias: Any


def ensemble_members(keras_model: Any) -> list[Any]:
    """An ensemble from training.ensemble is nested models whose outputs an Average layer
    takes; its probability is their mean, so each member is explained on its own terms."""
    last = keras_model.layers[-1]
    if type(last).__name__ != "Average":
        return [keras_model]
    return [tensor._keras_history[0] for tensor in last.input]


def _feature_layer(member: Any) -> Any:
    """The last layer whose output is still an image-shaped map, provided a convolution
    made it: for cnn-lstm the 1x1 convolution before the Reshape into rows. A Permute
    keeps the shape but swaps the axes (cnn-lstm-columns reads columns as steps), so its
    output, and any map made from it, is no longer laid out like the image and is part of the
    head."""
    spatial = []
    for layer in member.layers:
        if type(layer).__name__ in REORDERINGS:
            break
        if len(layer.output.shape) == 4:
            spatial.append(layer)
    if not any(type(layer).__name__ in CONVOLUTIONS for layer in spatial):
        raise NoHeatmapError("no convolutional feature map, so no heatmap is available")
    return spatial[-1]


def _split(member: Any) -> _Member:
    """Features from the image, the head from the features to the last dense layer's
    input, and that layer's weights: the logits are needed to keep the gradient alive
    when a confident member's softmax rounds to exactly 1."""
    import keras

    output = member.layers[-1]
    if type(output).__name__ != "Dense" or output.get_config().get("activation") != "softmax":
        raise NoHeatmapError("no softmax output layer, so no heatmap is available")
    feature = _feature_layer(member)
    return _Member(
        features=keras.Model(member.input, feature.output),
        head=keras.Model(feature.output, output.input),
        kernel=output.kernel,
        bias=output.bias,
    )


def _normalised(maps: Any) -> Any:
    """Each map scaled to its own maximum: maps say where, not how much, and a map
    with no positive evidence stays zero instead of amplifying rounding noise."""
    import tensorflow as tf

    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(maps, peak)


class HeatmapModel:
    """Probabilities and Grad-CAM maps in one pass; thread-safe like LoadedModel.

    For an ensemble the map is Grad-CAM of the ensemble's own probability, taking all
    members' feature channels as one layer: each member's linear map is weighted by its
    share of the average, the maps are summed, and the ReLU comes last, so a member's
    evidence against pneumonia can cancel another's evidence for it, as in the average.
    Each linear map is upsampled to the input size before the sum, since members need not
    share a grid; taking the ReLU after it keeps the zero line where the interpolated
    evidence changes sign instead of smearing positive cells into negative ones.

    The gradient is that of the positive class's log-odds rather than of the probability:
    the two differ by the positive factor p(1 - p) per image, which the per-image
    normalisation removes, but the log-odds, computed from the logits, do not vanish when a
    probability rounds to 1 in float32.
    """

    def __init__(self, card: ModelCard, keras_model: Any) -> None:
        import tensorflow as tf

        self.card = card
        self._calibration = Calibration.from_card(card.calibration)
        self._members = [_split(member) for member in ensemble_members(keras_model)]
        self._lock = threading.Lock()
        size = card.input_size
        self._explain = tf.function(
            self._graph,
            input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)],
            reduce_retracing=True,
        )

    def _graph(self, images: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        size = self.card.input_size
        positive = self.card.positive_index
        count = len(self._members)
        features = [member.features(images, training=False) for member in self._members]
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = [
                tf.matmul(member.head(feature, training=False), member.kernel) + member.bias
                for member, feature in zip(self._members, features, strict=True)
            ]
            log_probabilities = tf.stack([tf.nn.log_softmax(z) for z in logits])
            others = tf.concat(
                [log_probabilities[..., :positive], log_probabilities[..., positive + 1 :]],
                axis=-1,
            )
            log_odds = tf.reduce_logsumexp(
                log_probabilities[..., positive], axis=0
            ) - tf.reduce_logsumexp(others, axis=[0, 2])
        gradients = tape.gradient(log_odds, features)
        linear = tf.zeros([tf.shape(images)[0], size, size, 1])
        for feature, gradient in zip(features, gradients, strict=True):
            weights = tf.reduce_mean(gradient, axis=[1, 2], keepdims=True)
            member_map = tf.reduce_sum(weights * feature, axis=-1, keepdims=True)
            linear += tf.image.resize(member_map, [size, size], method="bilinear")
        maps = _normalised(tf.nn.relu(linear[..., 0]))
        probabilities = tf.add_n([tf.nn.softmax(z) for z in logits]) / count
        return probabilities[:, positive], maps

    def explain(self, pixels: np.ndarray, batch_size: int = 64) -> Explanation:
        """Calibrated probabilities (n,) float64 and maps (n, s, s) float32 in 0..1 for
        converted images (n, s, s), in fixed-size batches as LoadedModel.predict runs them."""
        size = self.card.input_size
        if pixels.ndim != 3 or pixels.shape[1:] != (size, size):
            raise ModelError(f"expected images of {size}x{size}, got {pixels.shape}")
        batch = pixels[..., np.newaxis].astype(np.float32, copy=False)
        probabilities, maps = [], []
        with self._lock:
            for start in range(0, len(batch), batch_size):
                probability, heatmap = self._explain(batch[start : start + batch_size])
                probabilities.append(probability.numpy())
                maps.append(heatmap.numpy())
        if not probabilities:
            return Explanation(np.zeros(0), np.zeros((0, size, size), np.float32))
        return Explanation(
            self._calibration.apply(np.concatenate(probabilities)),
            np.clip(np.concatenate(maps), 0.0, 1.0).astype(np.float32, copy=False),
        )


_cache: weakref.WeakKeyDictionary[LoadedModel, HeatmapModel | None] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def heatmap_model(model: LoadedModel) -> HeatmapModel | None:
    """The heatmap model of a loaded model, built once per process; None when the model
    cannot have one (see NoHeatmapError), which callers say rather than hide."""
    with _cache_lock:
        if model not in _cache:
            try:
                _cache[model] = HeatmapModel(model.card, model.keras_model)
            except NoHeatmapError:
                _cache[model] = None
        return _cache[model]

"""The model families compared by the project, by name, with their training defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import keras
from keras import layers

from training.data import CLASSES


@dataclass(frozen=True)
class Spec:
    build: Callable[[int], keras.Model]
    description: str
    epochs: int
    batch_size: int
    learning_rate: float
    augment: bool
    patience: int
    reduce_lr_on_plateau: bool
    weight_decay: float = 0.0


def seed_rnn(size: int) -> keras.Model:
    """Study 1 exactly: each image row is one time step of a SimpleRNN."""
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Reshape((size, size))(inputs)
    x = layers.SimpleRNN(128)(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="seed_rnn")


def _conv_block(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.MaxPooling2D()(x)


def _features(inputs: keras.KerasTensor) -> keras.KerasTensor:
    x = inputs
    for filters in (16, 32, 64, 128, 128):
        x = _conv_block(x, filters)
    return x


def cnn(size: int) -> keras.Model:
    """Study 2's CNN: 3x3 convolutions and pooling, a dense layer with dropout."""
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.GlobalAveragePooling2D()(_features(inputs))
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _separable_block(x: keras.KerasTensor, filters: int, pool: bool) -> keras.KerasTensor:
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    return layers.MaxPooling2D()(x) if pool else x


def _cnn_lstm(size: int, by_columns: bool, name: str) -> keras.Model:
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(24, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for filters, pool in ((48, True), (96, True), (192, True), (192, False)):
        x = _separable_block(x, filters, pool)
    x = layers.Conv2D(64, 1, activation="relu")(x)
    if by_columns:
        x = layers.Permute((2, 1, 3))(x)
    steps, cells, channels = x.shape[1:]
    x = layers.Reshape((steps, cells * channels))(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Bidirectional(layers.LSTM(64))(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def cnn_lstm(size: int) -> keras.Model:
    """Convolutional features read top to bottom, row by row, by a bidirectional LSTM: the
    recurrent reading of study 1, on features instead of raw pixels.

    A strided stem and depthwise-separable blocks keep it near 30 M multiply-adds per image,
    so that a 2-core CPU triages well over 100 images a second.
    """
    return _cnn_lstm(size, by_columns=False, name="cnn_lstm")


def cnn_lstm_columns(size: int) -> keras.Model:
    """The same features read across, column by column: each step is a vertical strip
    through apex and base, where a row holds both lungs at one height. Members that read
    the film differently err on different images, which is what an ensemble needs."""
    return _cnn_lstm(size, by_columns=True, name="cnn_lstm_columns")


ARCHITECTURES: dict[str, Spec] = {
    "seed-rnn": Spec(
        seed_rnn,
        "SimpleRNN(128) over image rows (study 1)",
        50,
        16,
        1e-3,
        augment=False,
        patience=50,
        reduce_lr_on_plateau=False,
    ),
    "cnn": Spec(
        cnn,
        "five 3x3 convolution blocks, dense head (study 2)",
        epochs=60,
        batch_size=32,
        learning_rate=1e-3,
        augment=True,
        patience=12,
        reduce_lr_on_plateau=True,
        weight_decay=1e-4,
    ),
    "cnn-lstm": Spec(
        cnn_lstm,
        "separable convolutions read row by row by a BiLSTM",
        epochs=60,
        batch_size=32,
        learning_rate=1e-3,
        augment=True,
        patience=12,
        reduce_lr_on_plateau=True,
        weight_decay=1e-4,
    ),
}
# The same training as cnn-lstm, so that a comparison of the two is one of reading order only.
ARCHITECTURES["cnn-lstm-columns"] = replace(
    ARCHITECTURES["cnn-lstm"],
    build=cnn_lstm_columns,
    description="separable convolutions read column by column by a BiLSTM",
)

"""Does a model give here, on this machine, the figures its card recorded where it was trained?

Models are trained on a GPU under Keras with the JAX backend and served on CPUs under
TensorFlow. This re-scores each model's own validation split through the service's
conversion and inference and sets the result beside its card; for an ensemble it also
re-scores every embedded member against the figures that member's own card recorded on the
machine that trained it. With --save it writes every image's score; with --against it
compares them image by image with scores saved on another machine or backend.

    .venv/bin/python benchmarks/backend_parity.py cnn-lstm-ensemble seed-rnn
    KERAS_BACKEND=jax python benchmarks/backend_parity.py cnn-lstm-ensemble --save gpu.npz
    .venv/bin/python benchmarks/backend_parity.py cnn-lstm-ensemble --against gpu.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np

from core.config import load_config
from core.model_store import MODEL_FILE, load_model, model_dir, positive_probabilities
from training.data import CLASSES, load_images
from training.metrics import evaluate_predictions
from training.split import SPLIT_FILE, read_split

TIE = 1e-4


def _row(
    name: str, trained_on: str, card: dict, scores: np.ndarray, labels: np.ndarray, threshold: float
) -> str:
    """A differing confusion matrix is explained only if as many images sit on the threshold
    as moved between cells; the last column counts them."""
    here = evaluate_predictions(labels, scores, threshold)
    same = card["confusion_matrix"] == here["confusion_matrix"]
    ties = int((np.abs(scores - threshold) < TIE).sum())
    return (
        f"| {name} | {trained_on} | {card['confusion_matrix']} | {here['confusion_matrix']} | "
        f"{card['auc']:.6f} | {here['auc']:.6f} | {abs(card['auc'] - here['auc']):.1e} | "
        f"{'yes' if same else 'no'} | {ties} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names or folders")
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument("--data", type=Path, help="the training data folder")
    parser.add_argument("--save", type=Path, help="write every image's score to this .npz")
    parser.add_argument("--against", type=Path, help="compare with scores saved by --save")
    args = parser.parse_args()
    saved: dict[str, np.ndarray] = {}
    thresholds: dict[str, float] = {}
    config = load_config(args.config)
    data = args.data or config.training.data_directory
    print(
        "| model | trained on | card confusion | here | card AUC | here AUC | diff | same "
        f"| images within {TIE:g} of the threshold |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        folder = model_dir(config.model.directory, name)
        loaded = load_model(config.model.directory, name)
        card = loaded.card
        validation = load_images(
            read_split(folder / SPLIT_FILE, data, "validation"), card.input_size
        )
        labels = validation.labels
        trained_on = card.training.get("device") or card.training.get("assembled_on", "")
        scores = loaded.predict(validation.pixels)
        print(_row(card.name, trained_on, card.validation, scores, labels, card.threshold))
        saved[card.name], thresholds[card.name] = scores, card.threshold
        members = card.training.get("members", [])
        if not members:
            continue
        ensemble = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        for index, member in enumerate(members, start=1):
            scores = positive_probabilities(
                ensemble.get_layer(f"member_{index}"),
                validation.pixels,
                CLASSES.index(card.positive_class),
            )
            print(
                _row(
                    f"{card.name} / {member['name']}",
                    member["training"]["device"],
                    member["validation"],
                    scores,
                    labels,
                    member["threshold"],
                )
            )
            key = f"{card.name}/{member['name']}"
            saved[key], thresholds[key] = scores, member["threshold"]
    if args.save:
        np.savez(args.save, backend=keras.backend.backend(), **saved)
    if args.against:
        _compare_scores(saved, thresholds, np.load(args.against))


def _compare_scores(
    here: dict[str, np.ndarray], thresholds: dict[str, float], other: np.lib.npyio.NpzFile
) -> None:
    backend = other["backend"]
    print(f"\n| model | images | largest score difference vs {backend} | labels that differ |")
    print("|---|---|---|---|")
    for name, scores in here.items():
        threshold = thresholds[name]
        differ = int(((scores >= threshold) != (other[name] >= threshold)).sum())
        print(f"| {name} | {len(scores)} | {np.abs(scores - other[name]).max():.2e} | {differ} |")


if __name__ == "__main__":
    main()

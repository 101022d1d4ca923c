"""Patient-level train/validation split, seeded and written down so it can be audited."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from training.data import CLASSES, Sample

SPLIT_FILE = "split.csv"


def split_by_patient(
    samples: tuple[Sample, ...] | list[Sample], validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation samples; no patient falls on both sides.

    StratifiedGroupKFold keeps the class balance of both parts close to the whole while
    keeping each patient's images together; the first fold is the validation part.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError("validation_fraction must be between 0 and 1")
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient for s in samples])
    folds = max(2, round(1 / validation_fraction))
    if len(set(groups)) < folds:
        raise ValueError(f"need at least {folds} patients for this validation fraction")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_index, validation_index = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train_index), np.sort(validation_index)


def write_split(
    path: Path, samples: tuple[Sample, ...], train: np.ndarray, validation: np.ndarray, root: Path
) -> None:
    subset = {int(i): "train" for i in train} | {int(i): "validation" for i in validation}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient", "label", "subset"])
        for index, sample in enumerate(samples):
            if index in subset:
                try:
                    name = sample.path.relative_to(root)
                except ValueError:
                    name = sample.path
                writer.writerow([name, sample.patient, CLASSES[sample.label], subset[index]])


def read_split(path: Path, root: Path, subset: str) -> list[Sample]:
    """The samples of one part of a saved split, so a later step scores the same patients."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            Sample(root / row["file"], CLASSES.index(row["label"]), row["patient"])
            for row in csv.DictReader(handle)
            if row["subset"] == subset
        ]

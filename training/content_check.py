"""Fitting a model folder's content check (core.content_check) on its own split.

The training images of the folder's `split.csv` give the distribution, its validation
images the limits, so the check knows exactly the patients the card's figures come from.
The arrays go beside the model; the limits, the method and the validation pass rate into
its card, which the service reads at load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.content_check import METHOD, PARAMETERS_FILE, fit, save
from core.model_store import read_card
from training.data import DataError, LoadedImages, load_images
from training.model_folder import write_card
from training.split import SPLIT_FILE, read_split


def fit_content_check(folder: Path, data: Path, command: str) -> dict[str, Any]:
    """`content-check` on the images of the folder's split."""
    card = read_card(folder)
    split = folder / SPLIT_FILE
    if not split.is_file():
        raise DataError(f"{folder.name} has no {SPLIT_FILE}: its validation patients are unknown")
    train = load_images(read_split(split, data, "train"), card.input_size)
    validation = load_images(read_split(split, data, "validation"), card.input_size)
    return record_content_check(folder, train, validation, command)


def record_content_check(
    folder: Path, train: LoadedImages, validation: LoadedImages, command: str
) -> dict[str, Any]:
    """Fit, store and record the check on images already decoded (see
    training.calibration.calibrate); return the card's new entry."""
    card = read_card(folder)
    check, passed = fit(train.pixels, validation.pixels)
    entry: dict[str, Any] = {
        "method": METHOD,
        "file": PARAMETERS_FILE,
        "sha256": save(check, folder),
        # Exact, not rounded: the validation image that sets a limit must still pass.
        "limit": check.limit,
        "orientation_bias": check.orientation_bias,
        "orientation_limit": check.orientation_limit,
        "validation_pass_rate": round(passed, 4),
        "fitted_on": f"the {len(train.pixels)} training images of {SPLIT_FILE}; limits on its"
        f" {len(validation.pixels)} validation images",
        "command": command,
    }
    updated = dataclasses.replace(card, content_check=entry)
    write_card(folder, updated)
    return entry

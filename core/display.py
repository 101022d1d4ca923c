"""Radiographs as a reader sees them, at a readable size, with window presets.

The same conversion as the model's input (core.pixels), at display size and with the aspect
ratio kept, so what the radiologist sees is what the model read. Radiographs have no
calibrated units like CT's Hounsfield scale, so fixed numeric windows mean nothing across
detectors; the presets are the windows the modality itself wrote into the header, and
windows set from the image's own distribution of values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.multival import MultiValue

from core.pixels import ConversionError, convert_frame, convert_picture, read_dicom
from core.pixels.decode import decode_first_frame

_WINDOW_TAGS = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTSequence")
# Percentiles of the image's own values that bound the computed windows.
COMPUTED = {"full": (0.5, 99.5), "contrast": (20.0, 80.0)}


@dataclass(frozen=True)
class Preset:
    key: str
    label: str


def _values(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def presets(ds: Dataset | None) -> list[Preset]:
    """As acquired first (what the model read), then each further header window, then the
    computed ones; a picture file has no header windows."""
    found = [Preset("default", "As acquired")]
    if ds is not None and "WindowCenter" in ds and "WindowWidth" in ds:
        centers, widths = _values(ds.WindowCenter), _values(ds.WindowWidth)
        names = _values(ds.get("WindowCenterWidthExplanation"))
        for index in range(1, min(len(centers), len(widths))):
            name = names[index] if index < len(names) and names[index] else f"window {index + 1}"
            found.append(Preset(f"window-{index + 1}", f"Header: {name.title()}"))
    return [
        *found,
        Preset("full", "Full range"),
        Preset("contrast", "High contrast"),
        Preset("invert", "Inverted"),
    ]


def _without_windows(ds: Dataset) -> Dataset:
    variant = copy.copy(ds)
    for keyword in _WINDOW_TAGS:
        if keyword in variant:
            delattr(variant, keyword)
    return variant


def _header_window(ds: Dataset, index: int) -> Dataset:
    variant = _without_windows(ds)
    variant.WindowCenter = _values(ds.WindowCenter)[index]
    variant.WindowWidth = _values(ds.WindowWidth)[index]
    return variant


def _window(values: np.ndarray, low_percentile: float, high_percentile: float) -> np.ndarray:
    low, high = np.percentile(values, [low_percentile, high_percentile])
    return np.clip((values - low) / max(float(high - low), 1e-6), 0.0, 1.0)


def _aspect(values: np.ndarray, rows: int, columns: int, longest: int) -> np.ndarray:
    scale = longest / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    image = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR)).clip(0.0, 1.0)


def render_dataset(ds: Dataset, preset: str, longest: int) -> np.ndarray:
    """Greyscale 0..1 of the first frame, its longest side `longest` pixels."""
    keys = {p.key for p in presets(ds)}
    if preset not in keys:
        raise ConversionError(f"unknown window preset {preset!r}")
    frame, _notes = decode_first_frame(ds)
    if preset.startswith("window-"):
        variant = _header_window(ds, int(preset.removeprefix("window-")) - 1)
    elif preset in COMPUTED:
        variant = _without_windows(ds)
    else:
        variant = ds
    values = convert_frame(frame, variant, longest).pixels
    if preset in COMPUTED:
        values = _window(values, *COMPUTED[preset])
    elif preset == "invert":
        values = 1.0 - values
    return _aspect(values, frame.shape[0], frame.shape[1], longest)


def render_file(path: Path, preset: str, longest: int) -> np.ndarray:
    return render_dataset(read_dicom(path), preset, longest)


def render_picture(source: BinaryIO, longest: int) -> np.ndarray:
    """A JPEG or PNG as it is, at display size with its aspect kept."""
    with Image.open(source) as image:
        rows, columns = image.height, image.width
    source.seek(0)
    values = convert_picture(source, longest).pixels
    return _aspect(values, rows, columns, longest)

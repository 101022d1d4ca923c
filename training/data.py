"""Labelled images for training and evaluation, read through the service's own conversion.

Two layouts: class folders (`NORMAL/`, `PNEUMONIA/`) of JPEG/PNG/DICOM files, or any files
listed in a labels CSV (`path,label[,patient]`). Patient keys come from the CSV, from the
DICOM Patient ID, or from the file-name conventions of the Kermany collection, because a
validation split that lets one patient's images fall on both sides measures memory, not skill.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from core.pixels import ConversionError, convert_file, is_dicom_file

CLASSES = ("NORMAL", "PNEUMONIA")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom", ""}
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),
    re.compile(r"^(NORMAL2-IM-\d+)-"),
    re.compile(r"^(IM-\d+)-"),
)


class DataError(Exception):
    """The training data cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient: str


@dataclass(frozen=True)
class LoadedImages:
    samples: tuple[Sample, ...]
    pixels: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def patients(self) -> np.ndarray:
        return np.array([s.patient for s in self.samples])

    def subset(self, indices: np.ndarray) -> LoadedImages:
        return LoadedImages(tuple(self.samples[i] for i in indices), self.pixels[indices])


def patient_key(path: Path) -> str:
    """The patient a file belongs to; unknown names count as their own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(path.name)
        if match:
            return match.group(1)
    if is_dicom_file(path):
        patient_id = str(dcmread(path, stop_before_pixels=True).get("PatientID", "")).strip()
        if patient_id:
            return f"dicom:{patient_id}"
    return f"file:{path.stem}"


def _label_index(text: str, where: str) -> int:
    name = text.strip().upper()
    if name not in CLASSES:
        raise DataError(f"{where}: label {text!r} is not one of {', '.join(CLASSES)}")
    return CLASSES.index(name)


def discover(data: Path, labels_csv: Path | None = None) -> list[Sample]:
    """List labelled files, in a stable order so that seeded splits are reproducible."""
    if labels_csv is not None:
        samples = []
        with labels_csv.open(newline="", encoding="utf-8") as handle:
            for row_number, row in enumerate(csv.DictReader(handle), start=2):
                where = f"{labels_csv.name} line {row_number}"
                if "path" not in row or "label" not in row:
                    raise DataError(f"{labels_csv.name} needs the columns path and label")
                path = (data / row["path"]).resolve()
                if not path.is_file():
                    raise DataError(f"{where}: no file {row['path']}")
                patient = (row.get("patient") or "").strip() or patient_key(path)
                samples.append(Sample(path, _label_index(row["label"], where), patient))
        return samples
    folders = {p.name.upper(): p for p in data.iterdir() if p.is_dir()} if data.is_dir() else {}
    missing = [c for c in CLASSES if c not in folders]
    if missing:
        raise DataError(
            f"{data} needs the class folders {', '.join(CLASSES)}; missing: {', '.join(missing)}"
        )
    samples = []
    for index, name in enumerate(CLASSES):
        for path in sorted(folders[name].iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, index, patient_key(path)))
    if not samples:
        raise DataError(f"no images found under {data}")
    return samples


def load_images(samples: Sequence[Sample], size: int, workers: int = 4) -> LoadedImages:
    """Convert every file exactly as the service would; unreadable files stop the run."""

    def convert(sample: Sample) -> np.ndarray:
        try:
            return convert_file(sample.path, size).pixels
        except ConversionError as exc:
            raise DataError(f"{sample.path}: {exc}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pixels = list(pool.map(convert, samples))
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size), np.float32)
    return LoadedImages(tuple(samples), stacked.astype(np.float32))

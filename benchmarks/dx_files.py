"""Realistic digital chest radiographs for the speed benchmarks, as a DX modality sends them.

What the node spends on an instance depends on its size and encoding rather than on what
it shows, but the worker's model and heatmap run on the pixels, so the images should look
like chest radiographs, not like noise. Each distinct image is a fixture radiograph from
`tests/data/images` (Kermany et al., CC BY 4.0) enlarged to detector size (2,000 x 2,500
by default), under a smooth exposure gradient (the heel effect, in a direction of its own)
and detector noise, stored at 16 bits in uncompressed Explicit VR Little Endian: 10 MB of
pixel data, Digital X-Ray Image Storage - For Presentation, a PA chest view.

A handful of distinct images are made once (about a second each); every file written from
them gets a patient, study, series and SOP Instance UID of its own, because each receiver
treats a second copy of an instance differently from a new one (the node acknowledges and
ignores it), and a benchmark must time new ones.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "images"
ROWS, COLUMNS = 2500, 2000
BITS = 16


def _radiograph(source: Path, rows: int, columns: int, rng: np.random.Generator) -> bytes:
    """A fixture radiograph at detector size: bicubic enlargement, an exposure gradient of
    +-15% across the image at a random angle, and Gaussian detector noise."""
    with Image.open(source) as image:
        grey = image.convert("L").resize((columns, rows), Image.Resampling.BICUBIC)
    values = np.asarray(grey, dtype=np.float32) * (((1 << BITS) - 1) / 255)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    ramp = (np.cos(angle) * x / columns + np.sin(angle) * y / rows) - 0.5
    values *= 1 + 0.3 * ramp
    values += rng.normal(0, 160, values.shape).astype(np.float32)
    return np.clip(np.rint(values), 0, (1 << BITS) - 1).astype("<u2").tobytes()


@dataclass(frozen=True)
class DxImages:
    """Distinct radiographs' pixel data, from which any number of instances are written."""

    pixels: tuple[bytes, ...]
    rows: int
    columns: int

    @classmethod
    def make(
        cls, distinct: int = 4, rows: int = ROWS, columns: int = COLUMNS, seed: int = 0
    ) -> DxImages:
        fixtures = sorted(FIXTURES.glob("*/*.jpeg"))
        if not fixtures:
            raise FileNotFoundError(f"no fixture radiographs under {FIXTURES}")
        rng = np.random.default_rng(seed)
        return cls(
            tuple(
                _radiograph(fixtures[k % len(fixtures)], rows, columns, rng)
                for k in range(distinct)
            ),
            rows,
            columns,
        )

    @property
    def file_megabytes(self) -> float:
        """Pixel data plus a header of well under a kilobyte."""
        return self.rows * self.columns * BITS / 8 / 1e6

    def write(self, directory: Path, count: int) -> list[Path]:
        """`count` files, each a new patient with one study, series and instance, cycling
        through the distinct images; each is named `<SOP Instance UID>.dcm`, so that a
        benchmark can find its instance in the database by the file's stem."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(count):
            ds = self._dataset(self.pixels[k % len(self.pixels)])
            path = directory / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def _dataset(self, pixels: bytes) -> Dataset:
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = sop_uid
        token = uuid.uuid4().hex[:10].upper()
        ds.PatientName = f"BENCHMARK^PATIENT {token}"
        ds.PatientID = f"BENCH{token}"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = f"A{token}"
        ds.StudyDescription = "XR CHEST PA"
        ds.SeriesDescription = "CHEST PA"
        ds.StudyID = "1"
        ds.Modality = "DX"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Manufacturer = "pneumotriage benchmarks"
        ds.ImagerPixelSpacing = [0.175, 0.175]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = self.rows, self.columns
        ds.BitsAllocated = 16
        ds.BitsStored = BITS
        ds.HighBit = BITS - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.WindowCenter = 1 << (BITS - 1)
        ds.WindowWidth = 1 << BITS
        ds.PixelData = pixels
        return ds

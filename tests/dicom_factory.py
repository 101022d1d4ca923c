"""Real DICOM objects made from the fixture radiographs, as a modality would send them."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

IMAGES = Path(__file__).parent / "data" / "images"


def fixture_images() -> list[Path]:
    return sorted(IMAGES.glob("*/*.jpeg"))


def grey_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def make_dataset(
    pixels: np.ndarray,
    *,
    patient_name: str = "Test^Patient",
    patient_id: str = "PID0001",
    accession_number: str = "ACC0001",
    modality: str = "CR",
    body_part: str = "CHEST",
    view_position: str = "PA",
    sop_class_uid: str = ComputedRadiographyImageStorage,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: date = date(2026, 11, 21),
) -> Dataset:
    """A minimal but valid image object: patient, study, series and 8-bit MONOCHROME2."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20190101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession_number
    ds.StudyDescription = "XR CHEST"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "pneumotriage tests"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def write(ds: Dataset, directory: Path, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path

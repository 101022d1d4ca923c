"""Real DICOM objects made from the fixture radiographs, as a modality would send them."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
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
    patient_id: str | None = None,
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
    """A minimal but valid image object: patient, study, series and 8-bit MONOCHROME2.
    Without a `patient_id`, one follows from the name, so that two test patients never share
    a Patient ID (which the node refuses as an identity conflict)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id or "PID" + hashlib.sha256(patient_name.encode()).hexdigest()[:12]
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


# --- Encodings -------------------------------------------------------------------------
# Every transfer syntax the node accepts, made by an independent encoder where one exists:
# DCMTK for the JPEG family, JPEG-LS, RLE and the uncompressed conversions, pydicom with
# pylibjpeg-openjpeg for JPEG 2000 (DCMTK's free toolkit has no JPEG 2000 codec) and
# OpenJPH's ojph_compress for HTJ2K where it is installed.


@dataclass(frozen=True)
class Encoding:
    name: str
    transfer_syntax: str
    lossy: bool = False
    max_bits: int = 16
    signed: bool = True


ENCODINGS = {
    e.name: e
    for e in (
        Encoding("explicit-le", ExplicitVRLittleEndian),
        Encoding("implicit-le", ImplicitVRLittleEndian),
        Encoding("explicit-be", ExplicitVRBigEndian),
        Encoding("deflated", DeflatedExplicitVRLittleEndian),
        Encoding("jpeg-baseline", JPEGBaseline8Bit, lossy=True, max_bits=8, signed=False),
        Encoding("jpeg-extended", JPEGExtended12Bit, lossy=True, max_bits=12, signed=False),
        Encoding("jpeg-lossless", JPEGLossless),
        Encoding("jpeg-lossless-sv1", JPEGLosslessSV1),
        Encoding("jpeg-ls-lossless", JPEGLSLossless),
        Encoding("jpeg-ls-near-lossless", JPEGLSNearLossless, lossy=True),
        Encoding("j2k-lossless", JPEG2000Lossless),
        Encoding("j2k-lossy", JPEG2000, lossy=True),
        Encoding("rle", RLELossless),
    )
}
HTJ2K_ENCODING = Encoding("htj2k-lossless", HTJ2KLossless, signed=False)

_DCMTK = {
    "explicit-le": ["dcmconv", "+te"],
    "implicit-le": ["dcmconv", "+ti"],
    "explicit-be": ["dcmconv", "+tb"],
    "deflated": ["dcmconv", "+td"],
    "jpeg-baseline": ["dcmcjpeg", "+eb", "+q", "90"],
    "jpeg-extended": ["dcmcjpeg", "+ee", "+q", "90"],
    "jpeg-lossless": ["dcmcjpeg", "+el", "+sv", "6"],
    "jpeg-lossless-sv1": ["dcmcjpeg", "+e1"],
    "jpeg-ls-lossless": ["dcmcjpls", "+el"],
    "jpeg-ls-near-lossless": ["dcmcjpls", "+en"],
    "rle": ["dcmcrle"],
}
DCMTK_TOOLS = sorted({command[0] for command in _DCMTK.values()})


def with_pixels(ds: Dataset, values: np.ndarray, bits_stored: int, signed: bool = False) -> Dataset:
    """Replace the pixels of a dataset by `values` stored with the given bit depth."""
    allocated = 8 if bits_stored <= 8 else 16
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
    ds.Rows, ds.Columns = values.shape[:2]
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return ds


def scaled(pixels: np.ndarray, bits_stored: int, signed: bool = False) -> np.ndarray:
    """8-bit grey values spread over `bits_stored` bits, as a detector would store them."""
    top = (1 << bits_stored) - 1
    values = np.rint(pixels.astype(np.float64) * top / 255).astype(np.int64)
    return values - (1 << (bits_stored - 1)) if signed else values


def encode(source: Path, encoding: Encoding, directory: Path) -> Path:
    """Write `source` (an uncompressed Part 10 file) in `encoding` and return the new file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.stem}.{encoding.name}.dcm"
    if encoding.name in _DCMTK:
        subprocess.run(
            [*_DCMTK[encoding.name], str(source), str(target)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    elif encoding.name.startswith("j2k"):
        ds = dcmread(source)
        options = {"j2k_cr": [10]} if encoding.lossy else {}
        ds.compress(encoding.transfer_syntax, encoding_plugin="pylibjpeg", **options)
        ds.save_as(target, enforce_file_format=True)
    elif encoding is HTJ2K_ENCODING:
        _encode_htj2k(source, target)
    else:
        raise ValueError(f"no encoder for {encoding.name}")
    return target


def _encode_htj2k(source: Path, target: Path) -> None:
    """OpenJPH reads PGM (8 or 16 bits); the codestream is encapsulated by pydicom."""
    ds = dcmread(source)
    values = ds.pixel_array
    if values.dtype.kind == "i":
        raise ValueError("ojph_compress input is unsigned PGM")
    with tempfile.TemporaryDirectory() as scratch:
        pgm = Path(scratch) / "frame.pgm"
        j2c = Path(scratch) / "frame.j2c"
        top = (1 << int(ds.BitsStored)) - 1
        header = f"P5 {values.shape[1]} {values.shape[0]} {top}\n".encode()
        pgm.write_bytes(header + values.astype(">u2" if top > 255 else "u1").tobytes())
        subprocess.run(
            ["ojph_compress", "-i", str(pgm), "-o", str(j2c), "-reversible", "true"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        ds.PixelData = encapsulate([j2c.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.save_as(target, enforce_file_format=True)

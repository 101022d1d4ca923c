"""Step 1 of the conversion: read a DICOM Part 10 file and decode its first frame.

The first frame is decoded with pydicom and its pylibjpeg plugins; native pixel data is read
in place, without the copy a plain decode makes. Reading checks every element's length
against its header, and the pixel data against its declared length and Rows x Columns, so
that a malformed or truncated file becomes one ConversionError with a readable reason
instead of a wrong picture or an exception somewhere later.

Importing this module installs a filter on pydicom's decoder log that drops the traceback
of each failing decoder plugin (the message is kept).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import UID

from core.pixels.result import ConversionError, one_line

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAG_NUMBERS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_RUST_PANIC = "PanicException"
_REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)


class _WithoutTraceback(logging.Filter):
    """pydicom logs every failing decoder plugin with its traceback before raising one error
    that names them all, which becomes the rejection reason. For a broken image that
    traceback is noise in the node's log; the message is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_WithoutTraceback())


def _number_of_frames(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ConversionError("Number of Frames is not a number") from None
    if frames < 1:
        raise ConversionError(f"Number of Frames is {frames}")
    return frames


def _bytes_present(element: object) -> int | None:
    """How many bytes of a value a short file holds, or None when the value is whole.

    pydicom keeps whatever a truncated file holds of a value without a word; only a raw
    element with a defined length can be checked against its header.
    """
    if isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH:
        present = len(element.value or b"")
        if present < element.length:
            return present
    return None


def _check_pixel_data_length(ds: Dataset, keyword: str, transfer_syntax: UID) -> None:
    """Compare the pixel data with its declared length and with Rows x Columns.

    pydicom silently keeps what a truncated file holds, and reads surplus native data as
    if it were padding; both would give the model a wrong picture rather than no picture.
    """
    element = ds.get_item(keyword)
    present = _bytes_present(element)
    if present is not None:
        raise ConversionError(
            f"pixel data is truncated: {present} of the {element.length} bytes "
            "its header declares are present"
        )
    if transfer_syntax.is_encapsulated:
        return
    runner = DecodeRunner(transfer_syntax)
    runner.set_source(ds)
    expected = int(np.ceil(runner.frame_length(unit="bytes") * runner.number_of_frames))
    actual = len(ds[keyword].value)
    if actual not in (expected, expected + expected % 2):
        raise ConversionError(
            f"pixel data is {actual} bytes but Rows x Columns x Samples per Pixel x Bits "
            f"Allocated x Number of Frames call for {expected}; the image size does not "
            "match its data"
        )


def decode_first_frame(ds: Dataset) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first frame's stored values; a read-only view on native pixel data, whose unused
    high bits convert_frame checks (see core.pixels.render.stored_values).

    Decoders are third-party code fed with untrusted bytes: whatever they raise means the
    same thing to a radiologist, that the pixels cannot be decoded. That includes a panic of
    the Rust RLE decoder (pylibjpeg-rle), which pyo3 raises as a BaseException so that
    ordinary handlers, the worker's included, would let it through.
    """
    keyword = next((tag for tag in _PIXEL_TAGS if tag in ds), None)
    if keyword is None:
        raise ConversionError("no pixel data in the object")
    file_meta = getattr(ds, "file_meta", None) or {}
    transfer_syntax = UID(str(file_meta.get("TransferSyntaxUID", "")))
    if not transfer_syntax:
        raise ConversionError("no Transfer Syntax UID in the file meta information")
    if not transfer_syntax.is_transfer_syntax:
        raise ConversionError(
            f"unknown transfer syntax {transfer_syntax}: pixel data cannot be decoded"
        )
    missing = [keyword for keyword in _REQUIRED if ds.get(keyword) in (None, "")]
    if missing:
        raise ConversionError(f"image attributes missing: {', '.join(missing)}")
    frames = _number_of_frames(ds)
    native = not transfer_syntax.is_encapsulated
    try:
        _check_pixel_data_length(ds, keyword, transfer_syntax)
        in_place = {"view_only": True, "correct_unused_bits": False} if native else {}
        frame = decode_pixels(ds, index=0, **in_place)
    except (ConversionError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ConversionError(f"pixel data cannot be decoded: {one_line(exc)}") from None
    except BaseException as exc:
        if type(exc).__name__ != _RUST_PANIC:
            raise
        raise ConversionError(f"pixel data cannot be decoded: {one_line(exc)}") from None
    notes = (f"multi-frame object: frame 1 of {frames} used",) if frames > 1 else ()
    return frame, notes


def has_dicom_preamble(head: bytes) -> bool:
    """Part 10 files start with a 128-byte preamble and the letters DICM."""
    return head[128:132] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        return has_dicom_preamble(handle.read(132))


def _decode_attributes(ds: Dataset) -> None:
    """pydicom decodes element values lazily, on first use, and keeps whatever a short file
    holds of a value. Checking every value's length against its header and decoding them
    all at once here (pixel data aside: decode_first_frame checks it) turns a malformed or
    truncated element into one reason at read time, instead of an exception wherever the
    value happens to be used first, or a silently shortened value."""
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAG_NUMBERS:
            continue
        raw = ds.get_item(tag)
        present = _bytes_present(raw)
        if present is not None:
            raise ConversionError(
                f"element {raw.tag} declares {raw.length} bytes but the file holds"
                f" {present}: the file is truncated or the length is wrong"
            )
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _decode_attributes(item)


def read_dicom(path: Path | BinaryIO) -> Dataset:
    """Parse a Part 10 file. A parser fed hostile bytes can fail in any way; every one of
    them means that the file cannot be read."""
    try:
        ds = dcmread(path, force=False)
        _decode_attributes(ds)
    except ConversionError:
        raise
    except InvalidDicomError as exc:
        raise ConversionError(f"not a DICOM file: {one_line(exc)}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ConversionError(f"DICOM file cannot be read: {one_line(exc)}") from None
    return ds

"""Pixel conversion: any radiograph, DICOM or picture file, to the model's square 0..1 input.

One path for every source, so that the model sees the same picture whether an image came
from the modality, from `predict` or from the training folders:

1. decode the first frame (pydicom with the pylibjpeg plugins; Pillow for JPEG/PNG);
2. colour images become luminance (ITU-R BT.601 weights), padding pixels become background;
3. area-resize the stored values to `size` x `size` (the aspect ratio is not kept, exactly
   as the training images were made from radiographs of many shapes);
4. Modality LUT or Rescale Slope/Intercept, then the VOI LUT or the first Window
   Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), on the small image;
5. MONOCHROME1, or Presentation LUT Shape INVERSE on MONOCHROME2, is inverted so that
   air is always dark;
6. the result is stretched to its own minimum and maximum, giving 0..1.

Resizing before the lookups is what keeps a 4,300 x 3,500 16-bit image cheap: the linear
steps commute exactly with an area average, and the window then works on 22,500 values
instead of 15 million. Step 6 makes the scale independent of bit depth and of whether a
window was present, so a JPEG export and its DICOM original give the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels import pixel_array as decode_pixels

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ConversionError(Exception):
    """The image cannot become a model input; the message is shown to people as the reason."""


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray
    notes: tuple[str, ...] = ()


def _resize(values: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resize in 32-bit float, so no bit depth is lost before the lookups."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.float32)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ConversionError("pixel values are not finite numbers")
    if high - low <= 1e-6:
        raise ConversionError("image has no contrast (every pixel has the same value)")
    return ((values - low) / (high - low)).astype(np.float32)


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ LUMA_WEIGHTS


def finish(values: np.ndarray, size: int) -> np.ndarray:
    """The last steps every source shares: resize and stretch to 0..1."""
    return _stretch(_resize(values, size))


def convert_picture(source: str | Path | BinaryIO, size: int) -> Converted:
    """JPEG/PNG as exported by viewers: already display values, light is dense tissue."""
    try:
        with Image.open(source) as image:
            image.load()
            mode = image.mode
            if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
                values = np.asarray(image, dtype=np.float32)
            else:
                values = to_luminance(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConversionError(f"cannot be decoded as an image file: {exc}") from None
    if values.ndim != 2 or min(values.shape) < 2:
        raise ConversionError(f"unexpected image shape {values.shape}")
    return Converted(finish(values, size))


def _padding_to_background(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """Padding marks pixels outside the exposed area; they must not set the contrast range."""
    if "PixelPaddingValue" not in ds:
        return frame
    low = ds.PixelPaddingValue
    high = ds.get("PixelPaddingRangeLimit", low)
    low, high = min(low, high), max(low, high)
    padded = (frame >= low) & (frame <= high)
    if not padded.any() or padded.all():
        return frame
    background = (
        frame[~padded].min()
        if ds.PhotometricInterpretation == "MONOCHROME2"
        else (frame[~padded].max())
    )
    return np.where(padded, background, frame)


def _needs_inversion(ds: Dataset) -> bool:
    """MONOCHROME1 shows low values white; INVERSE on MONOCHROME2 asks for the same flip.

    For MONOCHROME1 an INVERSE shape describes that one inversion (PS3.3 C.8.11.6), so it is
    not applied twice.
    """
    photometric = ds.PhotometricInterpretation
    inverse_shape = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and inverse_shape)


def _lookup_ready(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """LUTs index by stored value, so resized values go back to integers before a lookup."""
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        return np.rint(values).astype(np.int64)
    return values


def _decode_first_frame(ds: Dataset) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        frame = decode_pixels(ds, index=0) if frames > 1 else ds.pixel_array
    except (ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError) as exc:
        raise ConversionError(f"pixel data cannot be decoded: {exc}") from None
    if frames > 1:
        notes.append(f"multi-frame object: frame 1 of {frames} used")
    return frame, notes


def convert_dataset(ds: Dataset, size: int) -> Converted:
    """Convert a decoded DICOM dataset; raise ConversionError with a reason people can read."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ConversionError("no pixel data in the object")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME | _COLOUR:
        raise ConversionError(f"unsupported Photometric Interpretation {photometric!r}")
    frame, notes = _decode_first_frame(ds)
    if photometric in _COLOUR:
        if frame.ndim != 3:
            raise ConversionError(f"colour image with unexpected shape {frame.shape}")
        notes.append(f"{photometric} converted to grayscale")
        return Converted(finish(to_luminance(frame), size), tuple(notes))
    if frame.ndim != 2:
        raise ConversionError(f"grayscale image with unexpected shape {frame.shape}")
    values = _resize(_padding_to_background(frame, ds), size)
    values = apply_modality_lut(_lookup_ready(values, ds), ds)
    try:
        values = apply_voi_lut(_lookup_ready(values, ds), ds, index=0, prefer_lut=True)
    except ValueError as exc:
        raise ConversionError(f"invalid VOI LUT or window: {exc}") from None
    values = np.asarray(values, dtype=np.float32)
    if _needs_inversion(ds):
        values = -values
    return Converted(_stretch(values), tuple(notes))


def is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def read_dicom(path: Path) -> Dataset:
    try:
        return dcmread(path, force=False)
    except InvalidDicomError as exc:
        raise ConversionError(f"not a DICOM file: {exc}") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise ConversionError(f"DICOM file cannot be read: {exc}") from None


def convert_file(path: Path, size: int) -> Converted:
    """DICOM Part 10 files are recognised by their preamble; anything else goes to Pillow."""
    try:
        dicom = is_dicom_file(path)
    except OSError as exc:
        raise ConversionError(f"cannot open {path.name}: {exc.strerror or exc}") from None
    if dicom:
        return convert_dataset(read_dicom(path), size)
    return convert_picture(path, size)

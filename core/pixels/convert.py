"""The conversion's entry points, and its last steps (5 and 6): resize and stretch.

Every source ends the same way:

5. an antialiased bilinear resize to `size` x `size` (the aspect ratio is not kept, exactly
   as the training images were made from radiographs of many shapes);
6. the result is stretched to its own minimum and maximum, giving 0..1.

Step 6 makes the scale independent of bit depth and of whether a
window was present, so a JPEG export and its DICOM original give the same input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset
from pydicom.pixels import apply_color_lut

from core.pixels.decode import decode_first_frame, is_dicom_file, read_dicom
from core.pixels.reduce import Reduced, reduce, reduce_colour
from core.pixels.render import padding_mask, render, stored_values
from core.pixels.result import ConversionError, Converted, one_line

_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
_PICTURE_MODES = {"L", "I;16", "I;16B", "I;16L", "I", "F"}


def _resample(values: np.ndarray, size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32)


def _stretch(values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    counted = values if keep is None else values[keep]
    if counted.size == 0:
        raise ConversionError("image holds nothing but padding")
    low, high = float(counted.min()), float(counted.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ConversionError("pixel values are not finite numbers")
    if high - low <= 1e-6 * max(1.0, abs(high), abs(low)):
        raise ConversionError("image has no contrast (every pixel has the same value)")
    out = ((values - low) / (high - low)).astype(np.float32)
    if keep is not None:
        out[~keep] = 0.0
    return np.clip(out, 0.0, 1.0, out=out)


def _finish(values: np.ndarray, reduced: Reduced, size: int) -> np.ndarray:
    """Resize the rendered block means and stretch them; padding weighs nothing."""
    if reduced.coverage is None:
        return _stretch(_resample(values, size, reduced.box))
    weight = _resample(reduced.coverage, size, reduced.box)
    weighted = _resample(values * reduced.coverage, size, reduced.box)
    keep = weight > 1e-6
    resized = np.divide(weighted, weight, out=np.zeros_like(weighted), where=keep)
    return _stretch(resized, keep)


def finish(values: np.ndarray, size: int) -> np.ndarray:
    """The steps every source without display LUTs shares: area-resize and stretch."""
    reduced = reduce(values, size)
    return _finish(reduced.means, reduced, size)


def convert_picture(source: str | Path | BinaryIO, size: int) -> Converted:
    """JPEG/PNG as exported by viewers: already display values, light is dense tissue."""
    try:
        with Image.open(source) as image:
            image.load()
            if image.mode not in _PICTURE_MODES:
                image = image.convert("RGB")
            values = np.asarray(image)
    except Image.DecompressionBombError:
        raise ConversionError(
            "picture file has too many pixels to be a radiograph (refused before decoding)"
        ) from None
    except UnidentifiedImageError:
        raise ConversionError(
            "neither a DICOM Part 10 file (no DICM marker after the preamble) nor a picture"
            " file (JPEG, PNG, ...)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"picture file cannot be decoded: {one_line(exc)}") from None
    if values.ndim == 3:
        reduced = reduce_colour(values, size)
        return Converted(_finish(reduced.means, reduced, size))
    if values.ndim != 2 or min(values.shape) < 2:
        raise ConversionError(f"unexpected image shape {values.shape}")
    return Converted(finish(values, size))


def convert_frame(frame: np.ndarray, ds: Dataset, size: int) -> Converted:
    """Turn decoded stored values into the model input; everything after the decode."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME | _COLOUR:
        raise ConversionError(f"unsupported Photometric Interpretation {photometric!r}")
    if min(frame.shape[:2]) < 2:
        raise ConversionError(f"image of {frame.shape[0]} x {frame.shape[1]} pixels is too small")
    if photometric in _COLOUR:
        if photometric == "PALETTE COLOR" and frame.ndim == 2:
            try:
                frame = apply_color_lut(frame, ds)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
                raise ConversionError(f"invalid palette: {one_line(exc)}") from None
        if frame.ndim != 3 or frame.shape[2] < 3:
            raise ConversionError(f"colour image with unexpected shape {frame.shape}")
        reduced = reduce_colour(frame, size)
        note = f"{photometric} converted to grayscale"
        return Converted(_finish(reduced.means, reduced, size), (note,))
    if frame.ndim != 2:
        raise ConversionError(f"grayscale image with unexpected shape {frame.shape}")
    try:
        frame, magnitude = stored_values(frame, ds)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"Bits Stored is invalid: {one_line(exc)}") from None
    reduced = reduce(frame, size, padding_mask(frame, ds), magnitude)
    rendered, notes = render(reduced.means, ds)
    return Converted(_finish(rendered, reduced, size), tuple(notes))


def convert_dataset(ds: Dataset, size: int) -> Converted:
    """Convert a read DICOM dataset; raise ConversionError with a reason people can read."""
    frame, decode_notes = decode_first_frame(ds)
    converted = convert_frame(frame, ds, size)
    return Converted(converted.pixels, decode_notes + converted.notes)


def convert_file(
    path: Path, size: int, screen: Callable[[Dataset], str | None] | None = None
) -> Converted:
    """DICOM Part 10 files are recognised by their preamble; anything else goes to Pillow.

    `screen` sees a DICOM dataset before its pixels are decoded and may return a reason to
    turn it away (the service's chest-radiograph rule); training passes none.
    """
    try:
        dicom = is_dicom_file(path)
    except OSError as exc:
        raise ConversionError(f"cannot be opened: {exc.strerror or exc}") from None
    if not dicom:
        return convert_picture(path, size)
    dataset = read_dicom(path)
    reason = screen(dataset) if screen else None
    if reason:
        raise ConversionError(reason)
    return convert_dataset(dataset, size)

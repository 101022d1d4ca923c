"""Steps 3 and 4 of the conversion: from stored values to what a viewer would display.

On the block means (see core.pixels.reduce): the Modality LUT or Rescale Slope/Intercept,
then the VOI LUT or the first Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID);
MONOCHROME1, or Presentation LUT Shape INVERSE on MONOCHROME2, is inverted so that air is
always dark. Also here, the two full-resolution passes over the stored values that come
before the averaging: clearing the bits above Bits Stored (stored_values), and finding the
pixels at the Pixel Padding Value that the averages leave out (padding_mask).
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from core.pixels.result import ConversionError, one_line


def _first_number(value: object) -> float:
    """Window Center/Width may hold several windows; the first is the default view."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Window Center/Width as PS3.3 C.11.2.1.2 defines them, in float32 and without the
    output range, which the final stretch makes irrelevant. A window that cannot be applied
    is left out with a note rather than failing an image that is otherwise readable."""
    try:
        center = _first_number(ds.WindowCenter)
        width = _first_number(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return values, ["Window Center/Width unreadable: no window applied"]
    notes: list[str] = []
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in {"LINEAR", "LINEAR_EXACT", "SIGMOID"}:
        notes.append(f"unknown VOI LUT Function {function}: LINEAR used")
        function = "LINEAR"
    smallest = 1.0 if function == "LINEAR" else np.nextafter(0.0, 1.0)
    if not (np.isfinite(center) and np.isfinite(width) and width >= smallest):
        return values, [*notes, f"Window Width {width:g} is invalid: no window applied"]
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32), notes
    if function == "LINEAR_EXACT":
        low, span = center - width / 2, width
    elif width == 1:
        return (values > center - 0.5).astype(np.float32), notes
    else:
        low, span = center - 0.5 - (width - 1) / 2, width - 1
    return np.clip((values - np.float32(low)) / np.float32(span), 0.0, 1.0), notes


def render(means: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Modality then VOI transform, then the inversion that makes air dark."""
    notes: list[str] = []
    values = means
    try:
        if "ModalityLUTSequence" in ds:
            values = apply_modality_lut(np.rint(values).astype(np.int64), ds)
        else:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            values = values * np.float32(slope) + np.float32(intercept)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ConversionError(f"invalid Modality LUT or rescale: {one_line(exc)}") from None
    values = np.asarray(values, dtype=np.float32)
    if ds.get("VOILUTSequence"):
        try:
            values = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise ConversionError(f"invalid VOI LUT: {one_line(exc)}") from None
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values, notes = _window(values, ds)
    values = np.asarray(values, dtype=np.float32)
    return (-values if _needs_inversion(ds) else values), notes


def padding_mask(frame: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Pixels at the Pixel Padding Value (or within its range) lie outside the exposed
    area; they must neither darken the averages nor set the contrast range. Finding them
    is a full-resolution pass, so it runs only for objects that declare padding."""
    if "PixelPaddingValue" not in ds or frame.dtype.kind not in "iu":
        return None
    try:
        low = int(ds.PixelPaddingValue)
        high = int(ds.get("PixelPaddingRangeLimit", low))
    except (TypeError, ValueError):
        return None
    low, high = min(low, high), max(low, high)
    padded = frame == low if low == high else (frame >= low) & (frame <= high)
    return padded if padded.any() else None


def _needs_inversion(ds: Dataset) -> bool:
    """MONOCHROME1 shows low values white; INVERSE on MONOCHROME2 asks for the same flip.

    For MONOCHROME1 an INVERSE shape describes that one inversion (PS3.3 C.8.11.6), so it is
    not applied twice.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    inverse_shape = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and inverse_shape)


def stored_values(frame: np.ndarray, ds: Dataset) -> tuple[np.ndarray, int | None]:
    """Clear the bits above Bits Stored where they are not, and return the values' magnitude.

    Native pixel data is read in place, so the unused high bits carry whatever the sender
    left there (old overlays, garbage). One pass finds the range; only a frame that breaks
    it pays for pydicom's correction (shift left, then arithmetic shift right, PS3.5 8.1.1).
    """
    if frame.dtype.kind not in "iu":
        return frame, None
    width = frame.dtype.itemsize * 8
    stored = min(int(ds.BitsStored), width)
    if stored == width == 8:
        return frame, None
    signed = frame.dtype.kind == "i"
    low = int(frame.min()) if signed else 0
    high = int(frame.max())
    half = 1 << (stored - 1)
    within = -half <= low and high < half if signed else high < (1 << stored)
    if not within:
        shift = width - stored
        frame = np.right_shift(np.left_shift(frame, shift), shift)
        low, high = (int(frame.min()) if signed else 0), int(frame.max())
    return frame, max(-low, high)

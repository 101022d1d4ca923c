"""Pixel conversion: any radiograph, DICOM or picture file, to the model's square 0..1 input.

One path for every source, so that the model sees the same picture whether an image came
from the modality, from `predict` or from the training folders:

1. decode the first frame with pydicom and its pylibjpeg plugins (Pillow for JPEG/PNG);
   native pixel data is read in place, without the copy a plain decode makes;
2. area-average blocks of whole pixels down to about three times the model size
   (Pillow's `reducing_gap` rule); pixels equal to the Pixel Padding Value are left out of
   the averages, and colour becomes luminance (ITU-R BT.601 weights);
3. Modality LUT or Rescale Slope/Intercept, then the VOI LUT or the first Window
   Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), on those block means;
4. MONOCHROME1, or Presentation LUT Shape INVERSE on MONOCHROME2, is inverted so that
   air is always dark;
5. an antialiased bilinear resize to `size` x `size` (the aspect ratio is not kept, exactly
   as the training images were made from radiographs of many shapes);
6. the result is stretched to its own minimum and maximum, giving 0..1.

Averaging before the lookups is what keeps a 4,300 x 3,500 16-bit image cheap: the
full-resolution work is a range check and one pass of integer additions, in the stored
type where it has the headroom, and the lookups see a few hundred thousand values instead
of 15 million. Averaging commutes exactly with the linear steps;
for the non-linear ones (a clipping window, a sigmoid, a LUT table) the blocks are small
enough (at most a third of an output pixel) that edges stay where a full-resolution
rendering puts them. Step 6 makes the scale independent of bit depth and of whether a
window was present, so a JPEG export and its DICOM original give the same input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels import pixel_array as decode_pixels
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import UID

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Pillow's reducing_gap: whole-pixel block means down to at least this many times the
# output size, then a true antialiased resize. At 3 the result is indistinguishable from
# resampling the full image (Pillow documentation), at a fraction of the cost.
REDUCING_GAP = 3.0
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
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
_PICTURE_MODES = {"L", "I;16", "I;16B", "I;16L", "I", "F"}


class _WithoutTraceback(logging.Filter):
    """pydicom logs every failing decoder plugin with its traceback before raising one error
    that names them all, which becomes the rejection reason. For a broken image that
    traceback is noise in the node's log; the message is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_WithoutTraceback())


class ConversionError(Exception):
    """The image cannot become a model input; the message is shown to people as the reason."""


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """Decoder messages span several lines; a reason in a history table should not."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Reduced:
    """Block means of one image, and where they sit in the final resize."""

    means: np.ndarray
    box: tuple[float, float, float, float]
    # Fraction of each block that is not padding; None when the image has no padding.
    coverage: np.ndarray | None = None


def _accumulator(dtype: np.dtype, bound: int, count: int) -> np.dtype:
    """The narrowest integer type that holds `count` values of magnitude `bound`.

    Summing in the stored type when it has the headroom (12-bit data in 16 bits) avoids
    numpy's casting loop, which costs three times the addition itself.
    """
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    kind = "u" if dtype.kind in "ub" else "i"
    for itemsize in (1, 2, 4, 8):
        if itemsize < dtype.itemsize:
            continue
        candidate = np.dtype(f"{kind}{itemsize}")
        if bound * count <= np.iinfo(candidate).max:
            return candidate
    return np.dtype(np.float64)


def _magnitude(values: np.ndarray) -> int:
    """The largest absolute value the array may hold; a pass over the data unless the
    type alone bounds it closely enough."""
    if values.dtype.kind == "b":
        return 1
    if values.dtype.itemsize == 1:
        return int(np.iinfo(values.dtype).max) + int(values.dtype.kind == "i")
    if values.dtype.kind == "u":
        return int(values.max())
    return max(-int(values.min()), int(values.max()))


def _sum_rows(values: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    """Sum each band of `factor` rows; a shorter last band keeps its own sum."""
    rows, columns = values.shape
    whole = rows // factor
    out = np.empty((-(-rows // factor), columns), dtype)
    if whole:
        bands = values[: whole * factor].reshape(whole, factor, columns)
        np.sum(bands, axis=1, dtype=dtype, out=out[:whole])
    if rows > whole * factor:
        np.sum(values[whole * factor :], axis=0, dtype=dtype, out=out[whole])
    return out


def _sum_columns(values: np.ndarray, factor: int, dtype: np.dtype) -> np.ndarray:
    """Sum each group of `factor` columns with strided additions, which numpy vectorises
    where a reduction over a short last axis does not."""
    rows, columns = values.shape
    whole = columns // factor
    out = np.empty((rows, -(-columns // factor)), dtype)
    if whole:
        head = out[:, :whole]
        np.copyto(head, values[:, 0 : whole * factor : factor], casting="safe")
        for offset in range(1, factor):
            np.add(head, values[:, offset : whole * factor : factor], out=head)
    if columns > whole * factor:
        np.sum(values[:, whole * factor :], axis=1, dtype=dtype, out=out[:, whole])
    return out


def _block_means(sums: np.ndarray, shape: tuple[int, int], factors: tuple[int, int]) -> np.ndarray:
    """Divide by the block areas; only the last row and column of blocks may be partial."""
    means = sums.astype(np.float32)
    means *= np.float32(1.0 / (factors[0] * factors[1]))
    if shape[0] % factors[0]:
        means[-1, :] *= np.float32(factors[0] / (shape[0] % factors[0]))
    if shape[1] % factors[1]:
        means[:, -1] *= np.float32(factors[1] / (shape[1] % factors[1]))
    return means


def _block_sums(
    values: np.ndarray, factors: tuple[int, int], magnitude: int | None = None
) -> np.ndarray:
    factor_y, factor_x = factors
    if values.dtype.kind == "f":
        magnitude = 0
    elif magnitude is None:
        magnitude = _magnitude(values)
    rows = _sum_rows(values, factor_y, _accumulator(values.dtype, magnitude, factor_y))
    return _sum_columns(rows, factor_x, _accumulator(rows.dtype, magnitude * factor_y, factor_x))


def _factors(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """The same integer reduction Pillow's resize(reducing_gap=...) would choose."""
    return (
        max(1, int(shape[0] / size / REDUCING_GAP)),
        max(1, int(shape[1] / size / REDUCING_GAP)),
    )


def _reduce(
    values: np.ndarray,
    size: int,
    padding: np.ndarray | None = None,
    magnitude: int | None = None,
) -> _Reduced:
    """Block means of a 2-D array; `padding` marks pixels left out of the means, and
    `magnitude`, when the caller knows it, saves a pass over the data."""
    rows, columns = values.shape
    factors = _factors(values.shape, size)
    box = (0.0, 0.0, columns / factors[1], rows / factors[0])
    if padding is None:
        if factors == (1, 1):
            return _Reduced(values.astype(np.float32), box)
        sums = _block_sums(values, factors, magnitude)
        return _Reduced(_block_means(sums, values.shape, factors), box)
    kept = ~padding
    sums = _block_sums(np.where(kept, values, 0), factors, magnitude).astype(np.float64)
    counts = _block_sums(kept, factors).astype(np.float64)
    means = np.divide(sums, counts, out=np.zeros(counts.shape), where=counts > 0)
    coverage = _block_means(counts, values.shape, factors)
    return _Reduced(means.astype(np.float32), box, coverage)


def _reduce_colour(rgb: np.ndarray, size: int) -> _Reduced:
    """Luminance is linear, so it is taken of the block means rather than of every pixel."""
    channels = [_reduce(rgb[..., c], size) for c in range(3)]
    luminance = sum(w * ch.means for w, ch in zip(LUMA_WEIGHTS, channels, strict=True))
    return _Reduced(np.asarray(luminance, dtype=np.float32), channels[0].box)


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


def _finish(values: np.ndarray, reduced: _Reduced, size: int) -> np.ndarray:
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
    reduced = _reduce(values, size)
    return _finish(reduced.means, reduced, size)


def convert_picture(source: str | Path | BinaryIO, size: int) -> Converted:
    """JPEG/PNG as exported by viewers: already display values, light is dense tissue."""
    try:
        with Image.open(source) as image:
            image.load()
            if image.mode not in _PICTURE_MODES:
                image = image.convert("RGB")
            values = np.asarray(image)
    except UnidentifiedImageError:
        raise ConversionError(
            "neither a DICOM Part 10 file (no DICM marker after the preamble) nor a picture"
            " file (JPEG, PNG, ...)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConversionError(f"picture file cannot be decoded: {_one_line(exc)}") from None
    if values.ndim == 3:
        reduced = _reduce_colour(values, size)
        return Converted(_finish(reduced.means, reduced, size))
    if values.ndim != 2 or min(values.shape) < 2:
        raise ConversionError(f"unexpected image shape {values.shape}")
    return Converted(finish(values, size))


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


def _render(means: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
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
        raise ConversionError(f"invalid Modality LUT or rescale: {_one_line(exc)}") from None
    values = np.asarray(values, dtype=np.float32)
    if ds.get("VOILUTSequence"):
        try:
            values = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise ConversionError(f"invalid VOI LUT: {_one_line(exc)}") from None
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values, notes = _window(values, ds)
    values = np.asarray(values, dtype=np.float32)
    return (-values if _needs_inversion(ds) else values), notes


def _padding_mask(frame: np.ndarray, ds: Dataset) -> np.ndarray | None:
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


def _number_of_frames(ds: Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise ConversionError("Number of Frames is not a number") from None
    if frames < 1:
        raise ConversionError(f"Number of Frames is {frames}")
    return frames


def _check_pixel_data_length(ds: Dataset, keyword: str, transfer_syntax: UID) -> None:
    """Compare the pixel data with its declared length and with Rows x Columns.

    pydicom silently keeps what a truncated file holds, and reads surplus native data as
    if it were padding; both would give the model a wrong picture rather than no picture.
    """
    element = ds.get_item(keyword)
    if isinstance(element, RawDataElement) and element.length != _UNDEFINED_LENGTH:
        present = len(element.value or b"")
        if present < element.length:
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


def _stored_values(frame: np.ndarray, ds: Dataset) -> tuple[np.ndarray, int | None]:
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


def decode_first_frame(ds: Dataset) -> tuple[np.ndarray, tuple[str, ...]]:
    """The first frame's stored values; a read-only view on native pixel data, whose unused
    high bits convert_frame checks (see _stored_values).

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
        raise ConversionError(f"pixel data cannot be decoded: {_one_line(exc)}") from None
    except BaseException as exc:
        if type(exc).__name__ != _RUST_PANIC:
            raise
        raise ConversionError(f"pixel data cannot be decoded: {_one_line(exc)}") from None
    notes = (f"multi-frame object: frame 1 of {frames} used",) if frames > 1 else ()
    return frame, notes


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
                raise ConversionError(f"invalid palette: {_one_line(exc)}") from None
        if frame.ndim != 3 or frame.shape[2] < 3:
            raise ConversionError(f"colour image with unexpected shape {frame.shape}")
        reduced = _reduce_colour(frame, size)
        note = f"{photometric} converted to grayscale"
        return Converted(_finish(reduced.means, reduced, size), (note,))
    if frame.ndim != 2:
        raise ConversionError(f"grayscale image with unexpected shape {frame.shape}")
    try:
        frame, magnitude = _stored_values(frame, ds)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"Bits Stored is invalid: {_one_line(exc)}") from None
    reduced = _reduce(frame, size, _padding_mask(frame, ds), magnitude)
    rendered, notes = _render(reduced.means, ds)
    return Converted(_finish(rendered, reduced, size), tuple(notes))


def convert_dataset(ds: Dataset, size: int) -> Converted:
    """Convert a read DICOM dataset; raise ConversionError with a reason people can read."""
    frame, decode_notes = decode_first_frame(ds)
    converted = convert_frame(frame, ds, size)
    return Converted(converted.pixels, decode_notes + converted.notes)


def is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


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
        if isinstance(raw, RawDataElement) and raw.length != _UNDEFINED_LENGTH:
            present = len(raw.value or b"")
            if present < raw.length:
                raise ConversionError(
                    f"element {raw.tag} declares {raw.length} bytes but the file holds"
                    f" {present}: the file is truncated or the length is wrong"
                )
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _decode_attributes(item)


def read_dicom(path: Path) -> Dataset:
    """Parse a Part 10 file. A parser fed hostile bytes can fail in any way; every one of
    them means that the file cannot be read."""
    try:
        ds = dcmread(path, force=False)
        _decode_attributes(ds)
    except ConversionError:
        raise
    except InvalidDicomError as exc:
        raise ConversionError(f"not a DICOM file: {_one_line(exc)}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ConversionError(f"DICOM file cannot be read: {_one_line(exc)}") from None
    return ds


def convert_file(path: Path, size: int) -> Converted:
    """DICOM Part 10 files are recognised by their preamble; anything else goes to Pillow."""
    try:
        dicom = is_dicom_file(path)
    except OSError as exc:
        raise ConversionError(f"cannot open {path.name}: {exc.strerror or exc}") from None
    if dicom:
        return convert_dataset(read_dicom(path), size)
    return convert_picture(path, size)

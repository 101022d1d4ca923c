"""Pixel semantics of core.pixels, against independent references.

The reference for "the same picture" is always a conversion computed another way: the
fixture JPEG through Pillow, or pydicom's own Modality/VOI LUT functions applied to every
pixel before Pillow's resize. Differences are measured on the 150 x 150 model input (0..1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    fixture_images,
    grey_pixels,
    make_dataset,
    scaled,
    with_pixels,
    write,
)
from PIL import Image
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import SecondaryCaptureImageStorage

from core.pixels import (
    REDUCING_GAP,
    ConversionError,
    convert_dataset,
    convert_picture,
    finish,
    read_dicom,
)

SIZE = 150
# Lossless paths: the JPEG's float luminance against the rounded 8-bit grey stored in the
# DICOM, then bit-depth scaling; measured differences stay below 3e-4.
LOSSLESS = 2e-3


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def reference(values: np.ndarray) -> np.ndarray:
    """Pillow's own reducing_gap resize of every pixel, then the 0..1 stretch."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    resized = np.asarray(
        image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP),
        dtype=np.float64,
    )
    return (resized - resized.min()) / (resized.max() - resized.min())


@pytest.fixture(scope="module")
def picture() -> Path:
    return fixture_images()[5]


@pytest.fixture(scope="module")
def grey(picture: Path) -> np.ndarray:
    return grey_pixels(picture)


@pytest.fixture(scope="module")
def expected(picture: Path) -> np.ndarray:
    return convert_picture(picture, SIZE).pixels


def roundtrip(ds: Dataset, directory: Path) -> np.ndarray:
    """Write, read back as the worker does, convert."""
    return convert_dataset(read_dicom(write(ds, directory)), SIZE).pixels


def large(grey: np.ndarray, shape: tuple[int, int] = (2500, 2000), bits: int = 12) -> np.ndarray:
    enlarged = Image.fromarray(grey).resize(shape[::-1], Image.Resampling.BICUBIC)
    return scaled(np.asarray(enlarged), bits)


@pytest.mark.parametrize(
    "shape", [(2500, 2000), (2501, 1999), (4300, 3500), (224, 224), (7, 5), (1000, 451)]
)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_block_means_reproduce_pillows_reducing_gap_resize(shape, dtype) -> None:
    """The whole-pixel block means plus the final resize are Pillow's reducing_gap resize,
    including partial edge blocks, whatever the type and however full the 16-bit range."""
    rng = np.random.default_rng(7)
    if dtype == "float32":
        values = rng.normal(0, 1000, shape).astype(np.float32)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    assert max_difference(finish(values, SIZE), reference(values)) < 1e-5


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_every_bit_depth_signed_or_not_gives_the_jpeg_picture(
    bits, signed, grey, expected, tmp_path
) -> None:
    ds = with_pixels(make_dataset(grey), scaled(grey, bits, signed), bits, signed)
    assert max_difference(roundtrip(ds, tmp_path), expected) < LOSSLESS


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
    ],
)
def test_inversions_make_air_dark(photometric, shape, inverted, grey, expected, tmp_path) -> None:
    """MONOCHROME1 stores air bright; an INVERSE shape on MONOCHROME2 asks for the same
    flip; for MONOCHROME1 the INVERSE shape describes that one flip and is not doubled."""
    stored = 4095 - scaled(grey, 12) if inverted else scaled(grey, 12)
    ds = with_pixels(make_dataset(grey), stored, 12)
    ds.PhotometricInterpretation = photometric
    if shape:
        ds.PresentationLUTShape = shape
    assert max_difference(roundtrip(ds, tmp_path), expected) < LOSSLESS


def test_rescale_slope_and_intercept_are_applied(grey, expected, tmp_path) -> None:
    ds = with_pixels(make_dataset(grey), scaled(grey, 12), 12)
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1024"
    assert max_difference(roundtrip(ds, tmp_path), expected) < LOSSLESS
    ds.RescaleSlope = "-1"
    assert max_difference(roundtrip(ds, tmp_path), 1 - expected) < LOSSLESS


def lut_item(first: int, table: np.ndarray, bits: int = 16) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    item.LUTData = table.astype("<u2").tobytes()
    item["LUTData"].VR = "OW"
    return item


def test_modality_lut_table_matches_applying_it_to_every_pixel(grey, tmp_path) -> None:
    stored = scaled(grey, 12)
    table = np.rint(np.linspace(0, 1, 4096) ** 2.2 * 60000).astype(np.uint16)
    ds = with_pixels(make_dataset(grey), stored, 12)
    ds.ModalityLUTSequence = Sequence([lut_item(0, table)])
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    truth = reference(apply_modality_lut(stored, ds))
    assert max_difference(roundtrip(ds, tmp_path), truth) < 1e-4


def test_voi_lut_table_matches_applying_it_to_every_pixel(grey, tmp_path) -> None:
    stored = scaled(grey, 12)
    table = np.rint(4095 / (1 + np.exp(-(np.arange(4096) - 2000) / 300))).astype(np.uint16)
    ds = with_pixels(make_dataset(grey), stored, 12)
    ds.VOILUTSequence = Sequence([lut_item(0, table, 12)])
    ds.WindowCenter, ds.WindowWidth = 100, 10  # a LUT, where both are present, wins
    truth = reference(apply_voi_lut(stored, ds, prefer_lut=True))
    assert max_difference(roundtrip(ds, tmp_path), truth) < 1e-4


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_follows_pydicoms_definition(function, grey, tmp_path) -> None:
    """At 224 pixels the window meets every pixel, so pydicom's own windowing applied to
    the full image is the exact reference for the float32 implementation."""
    stored = scaled(grey, 12)
    ds = with_pixels(make_dataset(grey), stored, 12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1800, 1500, function
    truth = reference(apply_voi_lut(stored.astype(np.float64), ds))
    assert max_difference(roundtrip(ds, tmp_path), truth) < 1e-4


def test_first_of_several_windows_is_used(grey, tmp_path) -> None:
    ds = with_pixels(make_dataset(grey), scaled(grey, 12), 12)
    ds.WindowCenter, ds.WindowWidth = 1800, 1500
    first = roundtrip(ds, tmp_path)
    ds.WindowCenter, ds.WindowWidth = [1800, 400], [1500, 100]
    assert max_difference(roundtrip(ds, tmp_path), first) == 0


def test_window_on_block_means_stays_close_to_windowing_every_pixel(grey, tmp_path) -> None:
    """At detector size the window meets block means (a third of an output pixel at most).
    A narrow window with a saturated collimator edge is the worst case: the difference is
    confined to the edge and small on average."""
    stored = large(grey)
    stored[:, :150] = 4095
    stored[2300:, :] = 4095
    ds = with_pixels(make_dataset(grey), stored, 12)
    ds.WindowCenter, ds.WindowWidth = 1800, 1600
    truth = reference(apply_voi_lut(stored.astype(np.float64), ds))
    difference = np.abs(roundtrip(ds, tmp_path) - truth)
    assert difference.mean() < 0.002
    assert difference.max() < 0.15


def test_invalid_or_unknown_window_is_noted_not_fatal(grey, expected, tmp_path) -> None:
    ds = with_pixels(make_dataset(grey), scaled(grey, 12), 12)
    ds.WindowCenter, ds.WindowWidth = 1800, 0
    converted = convert_dataset(read_dicom(write(ds, tmp_path)), SIZE)
    assert max_difference(converted.pixels, expected) < LOSSLESS
    assert converted.notes == ("Window Width 0 is invalid: no window applied",)
    ds.WindowWidth, ds.VOILUTFunction = 5000, "GAMMA"
    converted = convert_dataset(read_dicom(write(ds, tmp_path)), SIZE)
    assert converted.notes == ("unknown VOI LUT Function GAMMA: LINEAR used",)


def padded_image(grey: np.ndarray, pad: int) -> np.ndarray:
    """The radiograph inside a frame of padding, brighter than anything exposed."""
    content = scaled(grey, 12) // 2
    frame = np.full((grey.shape[0] + 60, grey.shape[1] + 40), pad, dtype=np.int64)
    frame[30:-30, 20:-20] = content
    return frame


def test_padding_neither_sets_the_contrast_nor_darkens_the_edges(grey, tmp_path) -> None:
    values = padded_image(grey, 4095)
    ds = with_pixels(make_dataset(grey), values, 12)
    unaware = roundtrip(ds, tmp_path)
    ds.PixelPaddingValue = 4095
    aware = roundtrip(ds, tmp_path)
    border, inside = aware[:5, :].ravel(), aware[30:-30, 30:-30]
    assert np.all(border == 0), "padding shows as background"
    assert inside.max() == pytest.approx(1.0) and inside.min() >= 0
    # Without the padding value the bright frame takes the top of the range.
    assert unaware[30:-30, 30:-30].max() < 0.6

    ranged = padded_image(grey, 4000)
    ranged[:10] = 4090
    ds = with_pixels(make_dataset(grey), ranged, 12)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4095, 4000
    assert max_difference(roundtrip(ds, tmp_path), aware) < 1e-6


def test_declared_padding_that_is_absent_changes_nothing(grey, expected, tmp_path) -> None:
    ds = with_pixels(make_dataset(grey), scaled(grey, 12), 16)
    ds.PixelPaddingValue = 65535
    assert max_difference(roundtrip(ds, tmp_path), expected) < LOSSLESS


def test_unused_high_bits_are_ignored(grey, expected, tmp_path) -> None:
    """Old equipment kept overlays in the bits above Bits Stored."""
    stored = scaled(grey, 12)
    stored[:50, :50] |= 0x8000
    stored[60:80] |= 0x3000
    ds = with_pixels(make_dataset(grey), stored, 12)
    assert max_difference(roundtrip(ds, tmp_path), expected) < LOSSLESS


def rgb_capture(picture: Path, photometric: str) -> Dataset:
    with Image.open(picture) as image:
        rgb = np.asarray(image.convert("RGB"))
    ds = make_dataset(rgb[..., 0], sop_class_uid=SecondaryCaptureImageStorage, modality="OT")
    values = convert_color_space(rgb, "RGB", photometric) if photometric != "RGB" else rgb
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.ascontiguousarray(values).tobytes()
    return ds


@pytest.mark.parametrize(("photometric", "tolerance"), [("RGB", 1e-5), ("YBR_FULL", 0.01)])
def test_colour_captures_become_the_jpegs_luminance(
    photometric, tolerance, picture, expected, tmp_path
) -> None:
    path = write(rgb_capture(picture, photometric), tmp_path)
    converted = convert_dataset(read_dicom(path), SIZE)
    assert max_difference(converted.pixels, expected) < tolerance
    assert converted.notes == (f"{photometric} converted to grayscale",)


def test_palette_colour_is_converted() -> None:
    converted = convert_dataset(read_dicom(Path(get_testdata_file("examples_palette.dcm"))), SIZE)
    assert converted.pixels.shape == (SIZE, SIZE)
    assert converted.notes == ("PALETTE COLOR converted to grayscale",)


def test_multi_frame_uses_the_first_frame_and_says_so(grey, expected, tmp_path) -> None:
    noise = np.random.default_rng(1).integers(0, 4096, grey.shape)
    ds = with_pixels(make_dataset(grey), np.stack([scaled(grey, 12), noise]), 12)
    ds.Rows, ds.Columns = grey.shape
    ds.NumberOfFrames = 2
    converted = convert_dataset(read_dicom(write(ds, tmp_path)), SIZE)
    assert max_difference(converted.pixels, expected) < LOSSLESS
    assert converted.notes == ("multi-frame object: frame 1 of 2 used",)


@pytest.mark.parametrize("shape", [(223, 221), (151, 149), (7, 5), (3, 2), (2501, 1999)])
def test_odd_sizes_convert_like_the_same_picture_file(shape, grey, tmp_path) -> None:
    pixels = np.asarray(Image.fromarray(grey).resize(shape[::-1], Image.Resampling.BICUBIC))
    png = tmp_path / "same.png"
    Image.fromarray(pixels).save(png)
    ds = with_pixels(make_dataset(pixels), scaled(pixels, 12), 12)
    assert max_difference(roundtrip(ds, tmp_path), convert_picture(png, SIZE).pixels) < LOSSLESS


def test_a_flat_image_is_refused_with_a_reason(grey, tmp_path) -> None:
    ds = with_pixels(make_dataset(grey), np.full(grey.shape, 700), 12)
    with pytest.raises(ConversionError, match="no contrast"):
        roundtrip(ds, tmp_path)


def test_output_is_the_model_input(picture) -> None:
    pixels = convert_picture(picture, SIZE).pixels
    assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.float32
    assert pixels.min() == 0.0 and pixels.max() == 1.0

"""Parity: the same radiograph as a JPEG and in every transfer syntax gives the same input.

Each fixture JPEG is converted as a picture (the reference) and, as 8-bit grey pixels, as a
DICOM object written in every encoding the node accepts by an independent encoder (see
dicom_factory.encode). The 150 x 150 inputs are compared pixel by pixel and both shipped
models must give every one the label they give the JPEG.

Stated tolerances, on the 0..1 input (measured maxima in brackets):
* lossless encodings: max |difference| <= 0.001 (0.0000);
* JPEG baseline/extended, quality 90: max <= 0.03, mean <= 0.005 (0.014, 0.0024);
* JPEG-LS near-lossless, NEAR=2: max <= 0.03, mean <= 0.008 (0.015, 0.0043);
* JPEG 2000 lossy at 10:1: max <= 0.07, mean <= 0.012 (0.035, 0.0060);
* model probability: within 0.002 of the JPEG's for lossless encodings; for lossy ones within
  0.03 for the default model and 0.05 for the study's RNN, which reads raw pixel rows and
  whose calibrated scores are steep (0.043 for JPEG-LS near-lossless, seed 4).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, require_tools
from dicom_factory import (
    DCMTK_TOOLS,
    ENCODINGS,
    HTJ2K_ENCODING,
    Encoding,
    encode,
    fixture_images,
    grey_pixels,
    make_dataset,
    scaled,
    with_pixels,
    write,
)
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as decode

from core.model_store import LoadedModel, load_model
from core.pixels import convert_dataset, convert_picture, read_dicom
from dicom_node.contexts import TRANSFER_SYNTAXES

SIZE = 150
LOSSLESS = 1e-3
LOSSY = {  # encoding: (max, mean) absolute difference allowed
    "jpeg-baseline": (0.03, 0.005),
    "jpeg-extended": (0.03, 0.005),
    "jpeg-ls-near-lossless": (0.03, 0.008),
    "j2k-lossy": (0.07, 0.012),
}
PROBABILITY = {False: 0.002, True: 0.03}
RNN_LOSSY_PROBABILITY = 0.05
HAS_HTJ2K_ENCODER = shutil.which("ojph_compress") is not None
ALL_ENCODINGS = [
    *ENCODINGS.values(),
    pytest.param(
        HTJ2K_ENCODING,
        marks=pytest.mark.skipif(
            not HAS_HTJ2K_ENCODER,
            reason="HTJ2K is optional: ojph_compress (Debian openjph-tools) encodes the fixture",
        ),
    ),
]


def encoding_id(encoding: Encoding) -> str:
    return encoding.name


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Each fixture JPEG's grey pixels as an uncompressed CR object."""
    require_tools(*DCMTK_TOOLS)
    directory = tmp_path_factory.mktemp("sources")
    return {
        image: write(make_dataset(grey_pixels(image)), directory, f"{image.stem}.dcm")
        for image in fixture_images()
    }


@pytest.fixture(scope="module")
def references() -> dict[Path, np.ndarray]:
    return {image: convert_picture(image, SIZE).pixels for image in fixture_images()}


@pytest.fixture(scope="module")
def models(references: dict[Path, np.ndarray]) -> list[tuple[LoadedModel, np.ndarray]]:
    """Both shipped models with their scores of the JPEGs; TensorFlow is loaded once for
    the module."""
    jpegs = np.stack(list(references.values()))
    loaded = [load_model(ROOT / "models", name) for name in ("cnn-lstm-ensemble", "seed-rnn")]
    return [(model, model.predict(jpegs)) for model in loaded]


def convert(path: Path) -> np.ndarray:
    return convert_dataset(read_dicom(path), SIZE).pixels


@pytest.mark.parametrize("encoding", ALL_ENCODINGS, ids=encoding_id)
def test_every_encoding_gives_the_jpeg_input_and_label(
    encoding: Encoding,
    sources: dict[Path, Path],
    references: dict[Path, np.ndarray],
    models: list[tuple[LoadedModel, np.ndarray]],
    tmp_path: Path,
) -> None:
    inputs = []
    for image, source in sources.items():
        path = encode(source, encoding, tmp_path)
        assert dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
            encoding.transfer_syntax
        )
        pixels = convert(path)
        difference = np.abs(pixels - references[image])
        limit, mean_limit = LOSSY.get(encoding.name, (LOSSLESS, LOSSLESS))
        assert difference.max() <= limit, f"{image.name}: max {difference.max():.4f}"
        assert difference.mean() <= mean_limit, f"{image.name}: mean {difference.mean():.4f}"
        inputs.append(pixels)
    for model, jpeg_probabilities in models:
        probabilities = model.predict(np.stack(inputs))
        labels = [model.card.label_for(p) for p in probabilities]
        assert labels == [model.card.label_for(p) for p in jpeg_probabilities], model.card.name
        limit = PROBABILITY[encoding.lossy]
        if encoding.lossy and model.card.architecture == "seed-rnn":
            limit = RNN_LOSSY_PROBABILITY
        assert np.abs(probabilities - jpeg_probabilities).max() <= limit, model.card.name


def depth_cases() -> list:
    """Every lossless encoding at 12 and 16 bits, signed where the encoder stores that."""
    cases = []
    for case in ALL_ENCODINGS:
        encoding = case.values[0] if hasattr(case, "values") else case
        marks = case.marks if hasattr(case, "marks") else ()
        if encoding.lossy:
            continue
        for bits in (12, 16):
            for signed in (False, True) if encoding.signed else (False,):
                cases.append(
                    pytest.param(
                        encoding, bits, signed, marks=marks, id=f"{encoding.name}-{bits}-{signed}"
                    )
                )
    return cases


@pytest.mark.parametrize(("encoding", "bits", "signed"), depth_cases())
def test_lossless_encodings_at_detector_bit_depths(
    encoding: Encoding, bits: int, signed: bool, tmp_path: Path
) -> None:
    require_tools(*DCMTK_TOOLS)
    image = fixture_images()[0]
    grey = grey_pixels(image)
    ds = with_pixels(make_dataset(grey), scaled(grey, bits, signed), bits, signed)
    path = encode(write(ds, tmp_path / "source"), encoding, tmp_path)
    expected = convert_picture(image, SIZE).pixels
    assert np.abs(convert(path) - expected).max() <= LOSSLESS


@pytest.fixture(scope="module")
def detector_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixture enlarged to 2,000 x 2,500 at 12 bits: the block-mean path, as in practice."""
    require_tools(*DCMTK_TOOLS)
    grey = grey_pixels(fixture_images()[6])
    enlarged = np.asarray(Image.fromarray(grey).resize((2000, 2500), Image.Resampling.BICUBIC))
    ds = with_pixels(make_dataset(enlarged), scaled(enlarged, 12), 12)
    return write(ds, tmp_path_factory.mktemp("detector"), "detector.dcm")


@pytest.mark.parametrize(
    "encoding",
    [c for c in ALL_ENCODINGS if getattr(c, "max_bits", 16) >= 12],
    ids=encoding_id,
)
def test_detector_sized_image_is_the_same_input_in_every_encoding(
    encoding: Encoding, detector_size: Path, tmp_path: Path
) -> None:
    expected = convert(detector_size)
    difference = np.abs(convert(encode(detector_size, encoding, tmp_path)) - expected)
    limit, mean_limit = LOSSY.get(encoding.name, (0.0, 0.0))
    assert difference.max() <= limit and difference.mean() <= mean_limit


@pytest.mark.parametrize("encoding", ALL_ENCODINGS, ids=encoding_id)
def test_production_decoders_read_every_compressed_encoding(
    encoding: Encoding, sources: dict[Path, Path], tmp_path: Path
) -> None:
    """The service decodes with pylibjpeg (pyjpegls, which highdicom needs, is not used)."""
    path = encode(next(iter(sources.values())), encoding, tmp_path)
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        reference = dcmread(next(iter(sources.values()))).pixel_array
        decoded = decode(ds, decoding_plugin="pylibjpeg")
        assert decoded.shape == reference.shape
        if not encoding.lossy:
            assert np.array_equal(decoded, reference)


def test_the_node_accepts_every_tested_encoding_and_pydicom_decodes_it() -> None:
    tested = {e.transfer_syntax for e in ENCODINGS.values()} | {HTJ2K_ENCODING.transfer_syntax}
    assert tested <= set(TRANSFER_SYNTAXES)
    for syntax in TRANSFER_SYNTAXES:
        decoder = get_decoder(syntax)
        assert decoder.is_available, syntax.name
        if syntax.is_encapsulated:
            assert "pylibjpeg" in decoder.available_plugins, syntax.name

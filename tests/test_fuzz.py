"""Fuzzing the parser-to-conversion path: whatever the bytes, a model input or a reason.

Valid objects in every family of encodings are mutated the ways files break in practice
(flipped bytes, truncation, inserted garbage, absurd element lengths) and fed to
core.intake.read_model_input, the path the worker and `predict` share. The only allowed
outcomes are a well-formed 150 x 150 input or a ConversionError with a one-line reason;
any other exception, a Rust panic from a decoder included, fails the test.

Deterministic and bounded for CI: derandomized, no example database, a fixed number of
examples (a few seconds on two cores), each on a 64 x 64 image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tools
from dicom_factory import (
    DCMTK_TOOLS,
    ENCODINGS,
    encode,
    fixture_images,
    grey_pixels,
    make_dataset,
    scaled,
    with_pixels,
    write,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.config import SelectionConfig
from core.intake import read_model_input
from core.pixels import ConversionError

SIZE = 150
EXAMPLES = 1500
SEED_ENCODINGS = [
    "explicit-le",
    "implicit-le",
    "explicit-be",
    "deflated",
    "jpeg-baseline",
    "jpeg-lossless-sv1",
    "jpeg-ls-lossless",
    "j2k-lossless",
    "rle",
]
LENGTHS = [0, 1, 3, 0xFFFF, 0x7FFFFFF0, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


class Seeds(list):
    """The seed objects, shown by count in Hypothesis reports rather than byte by byte."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed objects: {', '.join(SEED_ENCODINGS)}>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    require_tools(*DCMTK_TOOLS)
    directory = tmp_path_factory.mktemp("seeds")
    grey = np.asarray(Image.fromarray(grey_pixels(fixture_images()[4])).resize((64, 64)))
    eight = write(make_dataset(grey), directory / "8")
    twelve = write(with_pixels(make_dataset(grey), scaled(grey, 12), 12), directory / "12")
    found = Seeds()
    for name in SEED_ENCODINGS:
        encoding = ENCODINGS[name]
        source = eight if encoding.max_bits == 8 else twelve
        found.append(encode(source, encoding, directory / name).read_bytes())
    return found


mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.integers(1, 64)),
    st.tuples(st.just("length"), st.floats(0, 1), st.sampled_from(LENGTHS)),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    """Mutations act after the 132-byte preamble, so the worker always parses the file
    as DICOM: the point is the parser and the decoders, not the preamble check."""
    buffer = bytearray(data)
    for kind, where, value in mutations:
        at = 132 + int(where * max(len(buffer) - 132, 0))
        if kind == "truncate":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = bytes((at * 31 + i * 7) % 256 for i in range(value))
        elif at >= len(buffer):
            continue
        elif kind == "flip":
            buffer[at] = value
        else:
            buffer[at : at + 4] = value.to_bytes(4, "little")
    return bytes(buffer)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, len(SEED_ENCODINGS) - 1),
    mutations=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_objects_convert_or_are_rejected_with_a_reason(
    seeds: Seeds, tmp_path: Path, seed: int, mutations: list
) -> None:
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(mutate(seeds[seed], mutations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            converted = read_model_input(path, SelectionConfig(), SIZE)
        except ConversionError as refused:
            reason = str(refused)
            assert reason and "\n" not in reason
            return
    pixels = converted.pixels
    assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1

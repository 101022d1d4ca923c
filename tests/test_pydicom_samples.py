"""Real files: every sample pydicom ships ends converted or rejected with a reason.

pydicom's test files cover many encodings, modalities and deliberate defects (truncated,
mislabelled, padded, without file meta). Each goes through the worker's path with the
shipped selection rules, and through the parser and conversion alone (as if every
modality were allowed), and must end either as a model input or as a one-line reason:
no other exception, no traceback.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from pydicom.data import get_testdata_files

from core.config import load_config
from core.intake import read_model_input
from core.pixels import ConversionError, Converted, convert_file

SIZE = 150
SELECTION = load_config(ROOT / "config.toml", environ={}).selection
SAMPLES = sorted(Path(p) for p in get_testdata_files() if Path(p).is_file())

CONVERTED = {
    "CT_small.dcm",
    "ExplVR_BigEnd.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "rtdose.dcm",
}
REJECTED = {
    "MR_truncated.dcm": "pixel data is truncated: 8130 of the 8192 bytes",
    "MR_small_padded.dcm": "the image size does not match its data",
    "JPEG-lossy.dcm": "pixel data cannot be decoded",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID in the file meta information",
    "no_meta.dcm": "neither a DICOM Part 10 file",
    "rtplan.dcm": "no pixel data in the object",
    "rtplan_truncated.dcm": "the file is truncated or the length is wrong",
    "badVR.dcm": "Number of Frames is not a number",
    "nested_priv_SQ.dcm": "image attributes missing: Rows, Columns",
}


def outcome(action: object, path: Path) -> Converted | str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return action(path)  # type: ignore[operator]
        except ConversionError as refused:
            return str(refused)


def check(result: Converted | str) -> None:
    if isinstance(result, str):
        assert result and "\n" not in result and "Traceback" not in result
    else:
        assert result.pixels.shape == (SIZE, SIZE)
        assert np.isfinite(result.pixels).all()


@pytest.fixture(scope="module")
def outcomes(caplog_module: list[logging.LogRecord]) -> dict[str, dict[str, Converted | str]]:
    results = {}
    for path in SAMPLES:
        results[str(path.name) if path.parent.name == "test_files" else str(path)] = {
            "worker": outcome(lambda p: read_model_input(p, SELECTION, SIZE), path),
            "any modality": outcome(lambda p: convert_file(p, SIZE), path),
        }
    return results


@pytest.fixture(scope="module")
def caplog_module() -> list[logging.LogRecord]:
    """Log records of the whole run, to prove that nothing logged a traceback."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield records
    logging.getLogger().removeHandler(handler)


def test_there_are_many_samples() -> None:
    assert len(SAMPLES) > 150


def test_every_sample_is_converted_or_rejected_with_a_reason(outcomes, caplog_module) -> None:
    for results in outcomes.values():
        for result in results.values():
            check(result)
    assert not [r for r in caplog_module if r.exc_info], "a traceback was logged"


def test_the_readable_ones_are_read(outcomes) -> None:
    converted = {name for name, r in outcomes.items() if not isinstance(r["any modality"], str)}
    assert converted >= CONVERTED
    assert len(converted) >= 80


@pytest.mark.parametrize("name", REJECTED)
def test_the_broken_ones_say_why(outcomes, name: str) -> None:
    assert REJECTED[name] in outcomes[name]["any modality"]


def test_non_chest_samples_are_rejected_by_the_selection(outcomes) -> None:
    assert outcomes["CT_small.dcm"]["worker"] == "not a chest radiograph: modality CT is not CR/DX"
    assert "secondary capture of a NM image" in outcomes["JPEG2000.dcm"]["worker"]
    assert all(isinstance(r["worker"], str) for r in outcomes.values())

"""Broken objects end as a rejection with a reason, or a DICOM failure status, never a crash.

The first half feeds broken files to the worker's path (core.intake.read_model_input, what
the worker and `predict` call); the second half sends broken streams to the running node
and checks that it keeps serving other associations meanwhile and afterwards.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import Service, require_tools
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
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE

from core.config import SelectionConfig
from core.intake import read_model_input
from core.pixels import ConversionError

# pydicom warns about every defect these files have on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 150
TWO_GB = 0x7FFFFFF0
PIXEL_DATA_OB = b"\xe0\x7f\x10\x00OB\x00\x00"


def rejection(path: Path) -> str:
    with pytest.raises(ConversionError) as refused:
        read_model_input(path, SelectionConfig(), SIZE)
    reason = str(refused.value)
    assert reason and "\n" not in reason and len(reason) < 400
    return reason


def radiograph(directory: Path, bits: int = 8) -> Path:
    grey = grey_pixels(fixture_images()[0])
    ds = make_dataset(grey)
    if bits > 8:
        with_pixels(ds, scaled(grey, bits), bits)
    return write(ds, directory)


def with_length(raw: bytes, marker: bytes, length: int) -> bytes:
    """Replace the 4-byte length after an explicit VR OB/OW header."""
    at = raw.rfind(marker)
    assert at > 0
    return raw[: at + 8] + struct.pack("<I", length) + raw[at + 12 :]


def rle_overrun(directory: Path) -> Path:
    """Runs that decode to more bytes than the frame holds: pylibjpeg-rle panics (a Rust
    panic surfaces as a BaseException) rather than raising an error."""
    ds = with_pixels(make_dataset(np.zeros((64, 64), np.uint8)), np.zeros((64, 64)), 12)
    segment = bytes([0x81, 0x05]) * 40
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return write(ds, directory, "rle-overrun.dcm")


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.6, 0.99])
@pytest.mark.parametrize("encoding", ["explicit-le", "implicit-le", "rle", "j2k-lossless"])
def test_truncated_files(fraction: float, encoding: str, tmp_path: Path) -> None:
    require_tools(*DCMTK_TOOLS)
    whole = encode(radiograph(tmp_path / "source", 12), ENCODINGS[encoding], tmp_path)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[: max(132, int(len(raw) * fraction))])
    rejection(cut)


def test_truncated_pixel_data_names_the_missing_bytes(tmp_path: Path) -> None:
    raw = radiograph(tmp_path).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:-1000])
    assert "pixel data is truncated" in rejection(cut)


def test_declared_length_of_two_gigabytes(tmp_path: Path) -> None:
    raw = radiograph(tmp_path).read_bytes()
    pixels = tmp_path / "pixels-2gb.dcm"
    pixels.write_bytes(with_length(raw, PIXEL_DATA_OB, TWO_GB))
    assert f"of the {TWO_GB} bytes its header declares" in rejection(pixels)

    ds = make_dataset(grey_pixels(fixture_images()[0]))
    ds.add_new(0x00090010, "LO", "PNEUMOTRIAGE TEST")
    ds.add_new(0x00091010, "OB", b"\x00" * 16)
    private = write(ds, tmp_path / "private")
    element = tmp_path / "element-2gb.dcm"
    element.write_bytes(with_length(private.read_bytes(), b"\x09\x00\x10\x10OB\x00\x00", TWO_GB))
    assert f"(0009,1010) declares {TWO_GB} bytes" in rejection(element)


def test_declared_length_of_two_gigabytes_keeps_memory_bounded(tmp_path: Path) -> None:
    """Measured in a fresh process: its peak resident size must not grow by anything like
    the declared length (pydicom reads what the file holds, not what it claims)."""
    raw = radiograph(tmp_path).read_bytes()
    path = tmp_path / "pixels-2gb.dcm"
    path.write_bytes(with_length(raw, PIXEL_DATA_OB, TWO_GB))
    script = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from core.config import SelectionConfig\n"
        "from core.intake import read_model_input\n"
        "from core.pixels import ConversionError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_model_input(Path(sys.argv[1]), SelectionConfig(), 150)\n"
        "except ConversionError:\n"
        "    pass\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grown_kib': after - before}))\n"
    )
    measured = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert json.loads(measured.stdout)["grown_kib"] < 50 * 1024


def test_missing_pixel_data(tmp_path: Path) -> None:
    ds = make_dataset(grey_pixels(fixture_images()[0]))
    del ds.PixelData
    assert rejection(write(ds, tmp_path)) == (
        "not an image (Computed Radiography Image Storage); no pixel data"
    )


@pytest.mark.parametrize(("rows", "columns"), [(448, 224), (112, 224), (224, 223), (225, 224)])
def test_rows_and_columns_that_disagree_with_the_data(rows: int, columns: int, tmp_path) -> None:
    ds = make_dataset(grey_pixels(fixture_images()[0]))
    ds.Rows, ds.Columns = rows, columns
    assert "the image size does not match its data" in rejection(write(ds, tmp_path))


def test_rows_and_columns_that_disagree_with_compressed_data(tmp_path: Path) -> None:
    require_tools(*DCMTK_TOOLS)
    path = encode(radiograph(tmp_path / "source"), ENCODINGS["jpeg-ls-lossless"], tmp_path)
    raw = path.read_bytes()
    rows = raw.find(b"\x28\x00\x10\x00US\x02\x00")
    wrong = raw[: rows + 8] + struct.pack("<H", 300) + raw[rows + 10 :]
    path.write_bytes(wrong)
    assert "pixel data cannot be decoded" in rejection(path)


def test_unknown_transfer_syntax(tmp_path: Path) -> None:
    ds = make_dataset(grey_pixels(fixture_images()[0]))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    path = tmp_path / "unknown.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert rejection(path) == "unknown transfer syntax 1.2.3.4.5.6.7: pixel data cannot be decoded"


def test_garbage_after_a_valid_preamble(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for size in (0, 10, 1000, 100_000):
        path = tmp_path / f"garbage-{size}.dcm"
        path.write_bytes(b"\x00" * 128 + b"DICM" + rng.bytes(size))
        rejection(path)
    valid_meta = radiograph(tmp_path).read_bytes()
    meta_end = valid_meta.find(b"\x08\x00")
    path = tmp_path / "garbage-dataset.dcm"
    path.write_bytes(valid_meta[:meta_end] + rng.bytes(5000))
    rejection(path)


def test_a_panicking_decoder_is_a_rejection(tmp_path: Path) -> None:
    assert "pixel data cannot be decoded" in rejection(rle_overrun(tmp_path))


def test_wrong_element_lengths(tmp_path: Path) -> None:
    raw = radiograph(tmp_path).read_bytes()
    name = raw.find(b"\x10\x00\x10\x00PN")
    for length in (0xFFFF, 3, 1):
        path = tmp_path / f"length-{length}.dcm"
        path.write_bytes(raw[: name + 6] + struct.pack("<H", length) + raw[name + 8 :])
        rejection(path)


# --- Through the running node ---------------------------------------------------------


def send_raw(service: Service, path: Path, syntax: str = ExplicitVRLittleEndian) -> int:
    status = service.send_unparsed(
        path, make_dataset(np.zeros((2, 2), np.uint8)).SOPClassUID, syntax
    )
    return int(status.Status) if "Status" in status else -1


@pytest.mark.interop
def test_broken_streams_end_as_failures_or_rejections_and_the_node_keeps_serving(
    service: Service, tmp_path: Path
) -> None:
    raw = radiograph(tmp_path / "whole").read_bytes()
    rows_at = raw.find(b"\x28\x00\x10\x00US\x02\x00")
    cases = {
        "rows": raw[: rows_at + 8] + struct.pack("<H", 100) + raw[rows_at + 10 :],
        "pixels-2gb": with_length(raw, PIXEL_DATA_OB, TWO_GB),
        "truncated": raw[: len(raw) // 3],
    }
    paths = {name: tmp_path / f"{name}.dcm" for name in cases}
    for name, data in cases.items():
        paths[name].write_bytes(data)
    paths["rle-overrun"] = rle_overrun(tmp_path)

    held = AE(ae_title="PYNETDICOM")
    held.add_requested_context("1.2.840.10008.1.1")
    idle = held.associate("127.0.0.1", service.port, ae_title="PNEUMOTRIAGE")
    assert idle.is_established, "a second association must be accepted while one is open"
    try:
        outcomes = {}
        for name, path in paths.items():
            syntax = RLELossless if name == "rle-overrun" else ExplicitVRLittleEndian
            outcomes[name] = send_raw(service, path, syntax)
            assert service.echo().returncode == 0, f"echo after {name}"
    finally:
        idle.release()
    for name, path in paths.items():
        if outcomes[name] == 0x0000:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert service.wait_for_status(uid, {"rejected"})["reason"], name
        else:
            assert outcomes[name] in {0xA700, 0xA900, 0xC210}, name


@pytest.mark.interop
def test_an_unknown_transfer_syntax_is_refused_in_negotiation(service: Service) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(make_dataset(np.zeros((2, 2), np.uint8)).SOPClassUID, "1.2.3.4.5.6")
    association = ae.associate("127.0.0.1", service.port, ae_title="PNEUMOTRIAGE")
    if association.is_established:
        assert association.accepted_contexts == []
        association.release()
    assert service.echo().returncode == 0


@pytest.mark.interop
def test_a_large_sender_does_not_block_others(service: Service, tmp_path: Path) -> None:
    """A large object arriving in small PDUs on one association while others echo and store."""
    grey = grey_pixels(fixture_images()[1])
    big = np.asarray(np.kron(grey, np.ones((12, 12), np.uint8)))
    path = write(make_dataset(big, patient_id="SLOW"), tmp_path / "slow")
    errors: list[BaseException] = []

    def slow_send() -> None:
        try:
            ae = AE(ae_title="PYNETDICOM")
            ae.maximum_pdu_size = 4096
            ae.add_requested_context(make_dataset(grey).SOPClassUID, ExplicitVRLittleEndian)
            association = ae.associate("127.0.0.1", service.port, ae_title="PNEUMOTRIAGE")
            association.send_c_store(path)
            association.release()
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    sender = threading.Thread(target=slow_send)
    sender.start()
    other = write(make_dataset(grey, patient_id="FAST"), tmp_path / "fast")
    assert service.echo().returncode == 0
    assert "Received Store Response (Success)" in service.store(other).stderr
    sender.join(timeout=120)
    assert not errors

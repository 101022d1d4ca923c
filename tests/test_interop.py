"""The running service driven by DCMTK's storescu and echoscu, as a modality would drive it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, Service
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from core.config import load_config

pytestmark = pytest.mark.interop

HOSTILE_NAME = "<script>alert(1)</script>^Mallory"
# Distinctive names, so that finding any part of one in the log cannot be a coincidence.
SR_NAME, DUPLICATE_NAME, INTRUDER_NAME = (
    "Quillfeather^Ysolde",
    "Vantongeren^Oswin",
    "Zabriskie^Ulla",
)
NO_PIXELS_NAME, TRUNCATED_NAME, BLOCKED_NAME = (
    "Krzyzanowski^Ines",
    "Oyelaran^Tobiah",
    "Brackwater^Ede",
)
PATIENT_NAMES = (
    HOSTILE_NAME,
    SR_NAME,
    DUPLICATE_NAME,
    INTRUDER_NAME,
    NO_PIXELS_NAME,
    TRUNCATED_NAME,
    BLOCKED_NAME,
)


def card() -> dict:
    """The card of the model the service runs by default."""
    config = load_config(ROOT / "config.toml", environ={})
    return json.loads((config.model.directory / config.model.name / "card.json").read_text())


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10].upper()}"


def store_ok(output: str) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", output))


def rows_for(service: Service, sop_uid: str) -> list[tuple]:
    return service.sql(
        "SELECT i.status, i.file_path, r.id FROM instances i "
        "LEFT JOIN results r ON r.instance_fk = i.id WHERE i.sop_instance_uid = ?",
        sop_uid,
    )


def test_echo(service: Service) -> None:
    result = service.echo()
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


def test_study_is_stored_triaged_reported_and_queryable(service: Service, dicom_dir: Path) -> None:
    normal = next(p for p in fixture_images() if p.parent.name == "NORMAL")
    pneumonia = next(p for p in fixture_images() if p.parent.name == "PNEUMONIA")
    patient_id, accession = unique("P"), unique("A")[:16]
    study_uid = generate_uid()
    sent = [
        write(
            make_dataset(
                grey_pixels(image),
                patient_name=name,
                patient_id=patient_id,
                accession_number=accession,
                study_uid=study_uid,
            ),
            dicom_dir,
        )
        for image, name in ((normal, HOSTILE_NAME), (pneumonia, HOSTILE_NAME))
    ]
    result = service.store(*sent)
    assert store_ok(result.stderr) == 2, result.stderr

    sop_uids = [path.stem for path in sent]
    for uid, path in zip(sop_uids, sent, strict=True):
        # Success is answered only once file and row are durable: both exist right away.
        ((status, file_path, _),) = rows_for(service, uid)
        stored = service.storage / file_path
        assert stored.read_bytes()[128:132] == b"DICM"
        assert stored.stat().st_size >= path.stat().st_size - 1024
        assert status in {"pending", "processing", "triaged"}

    promised = card()
    results = [service.wait_for_status(uid, {"triaged"}) for uid in sop_uids]
    for row in results:
        assert 0.0 <= row["probability"] <= 1.0
        expected = "PNEUMONIA" if row["probability"] >= promised["threshold"] else "NORMAL"
        assert row["label"] == expected
        assert row["flagged"] is (expected == "PNEUMONIA")
        assert (row["model_name"], row["model_version"]) == (promised["name"], promised["version"])
        assert row["patient_id"] == patient_id and row["accession_number"] == accession
        assert row["study_instance_uid"] == study_uid and row["reason"] == ""
        assert row["received_at"] <= row["processed_at"]

    filtered = service.history("--patient-id", patient_id)
    assert {r["sop_instance_uid"] for r in filtered} == set(sop_uids)
    assert service.history("--accession-number", accession)[0]["patient_id"] == patient_id
    flagged = {r["sop_instance_uid"] for r in service.history("--flagged")}
    assert flagged >= {r["sop_instance_uid"] for r in results if r["flagged"]}

    # The worker and `predict` share conversion and model: the same file, the same answer.
    predicted = json.loads(service.cli("predict", "--format", "json", str(sent[1])).stdout)
    worker_row = next(r for r in results if r["sop_instance_uid"] == sop_uids[1])
    assert predicted[0]["probability"] == pytest.approx(worker_row["probability"], abs=1e-4)

    report = service.workdir / "report.html"
    service.cli("report", "--since", "2000-01-01", "--out", str(report))
    html = report.read_text(encoding="utf-8")
    assert HOSTILE_NAME not in html and "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert accession in html and patient_id in html
    assert html.count("data:image/png;base64,") >= 2
    assert "not a diagnosis" in html
    assert promised["version"] in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset"


def test_duplicate_send_keeps_one_instance_and_one_result(
    service: Service, dicom_dir: Path
) -> None:
    path = write(
        make_dataset(
            grey_pixels(fixture_images()[0]), patient_name=DUPLICATE_NAME, patient_id=unique("P")
        ),
        dicom_dir,
    )
    first = service.store(path)
    assert store_ok(first.stderr) == 1, first.stderr
    service.wait_for_status(path.stem, {"triaged"})
    second = service.store(path, path)
    assert store_ok(second.stderr) == 2, second.stderr
    rows = rows_for(service, path.stem)
    assert len(rows) == 1 and rows[0][0] == "triaged" and rows[0][2] is not None
    assert len([r for r in service.history() if r["sop_instance_uid"] == path.stem]) == 1


def test_unknown_calling_ae_is_rejected_and_service_keeps_serving(
    service: Service, dicom_dir: Path
) -> None:
    path = write(
        make_dataset(grey_pixels(fixture_images()[0]), patient_name=INTRUDER_NAME), dicom_dir
    )
    refused = service.store(path, calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert rows_for(service, path.stem) == []
    assert "association from INTRUDER" in service.log()
    assert service.echo().returncode == 0


def test_structured_report_is_stored_and_rejected_with_reason(
    service: Service, dicom_dir: Path
) -> None:
    report = make_dataset(
        grey_pixels(fixture_images()[0]),
        sop_class_uid=BasicTextSRStorage,
        modality="SR",
        patient_name=SR_NAME,
    )
    for keyword in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        delattr(report, keyword)
    report.ValueType = "CONTAINER"
    report.ContinuityOfContent = "SEPARATE"
    path = write(report, dicom_dir)
    result = service.store(path)
    assert store_ok(result.stderr) == 1, result.stderr
    row = service.wait_for_status(path.stem, {"rejected"})
    assert "not an image" in row["reason"] and row["probability"] is None
    assert (service.storage / rows_for(service, path.stem)[0][1]).is_file()


def test_image_without_pixel_data_is_rejected_with_reason(
    service: Service, dicom_dir: Path
) -> None:
    dataset = make_dataset(grey_pixels(fixture_images()[0]), patient_name=NO_PIXELS_NAME)
    del dataset.PixelData
    path = write(dataset, dicom_dir)
    result = service.store(path)
    assert store_ok(result.stderr) == 1, result.stderr
    row = service.wait_for_status(path.stem, {"rejected"})
    assert "no pixel data" in row["reason"]


def test_truncated_stream_is_rejected_with_reason(service: Service, dicom_dir: Path) -> None:
    """storescu refuses to send a file it cannot parse, so the truncated stream comes from
    pynetdicom, which sends a file's bytes without decoding them."""
    whole = write(
        make_dataset(grey_pixels(fixture_images()[0]), patient_name=TRUNCATED_NAME), dicom_dir
    )
    truncated = dicom_dir / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    status = service.send_unparsed(
        truncated,
        make_dataset(grey_pixels(fixture_images()[0])).SOPClassUID,
        ExplicitVRLittleEndian,
    )
    if status.Status == 0x0000:
        row = service.wait_for_status(whole.stem, {"rejected"})
        assert "pixel data" in row["reason"] or "cannot be read" in row["reason"]
    else:
        assert status.Status in {0xA900, 0xC210} and status.ErrorComment
    assert service.echo().returncode == 0


def test_storage_failure_answers_out_of_resources_and_leaves_nothing(
    service: Service, dicom_dir: Path
) -> None:
    dataset = make_dataset(grey_pixels(fixture_images()[0]), patient_name=BLOCKED_NAME)
    path = write(dataset, dicom_dir)
    blocker = service.storage / dataset.StudyInstanceUID
    blocker.write_bytes(b"not a folder")
    try:
        refused = service.store(path)
        assert "Refused: OutOfResources" in refused.stderr, refused.stderr
        assert rows_for(service, path.stem) == []
        assert [p for p in (service.storage / ".incoming").rglob("*") if p.is_file()] == []
    finally:
        blocker.unlink()
    accepted = service.store(path)
    assert store_ok(accepted.stderr) == 1
    service.wait_for_status(path.stem, {"triaged"})


def test_logs_never_name_patients(service: Service) -> None:
    log = service.log()
    assert "stored " in log, "the interop tests above should have stored instances"
    for name in PATIENT_NAMES:
        for part in name.split("^"):
            assert part not in log, f"patient name part {part!r} leaked into the log"


def test_rejected_status_and_reasons_appear_in_report(service: Service) -> None:
    rejected = service.history("--status", "rejected")
    assert rejected and all(row["reason"] for row in rejected)
    report = service.workdir / "rejections.html"
    service.cli("report", "--since", "2000-01-01", "--out", str(report))
    html = report.read_text(encoding="utf-8")
    assert "not an image" in html and "no pixel data" in html

"""Patient identity through the running node, sent by DCMTK's storescu as a PACS would.

The shared service runs the default policy (refuse conflicts); a node of its own runs the
`review` policy. Every name here is distinctive, so that the log check can find any leak.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Service
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom import Dataset
from test_interop import store_ok, unique

pytestmark = pytest.mark.interop

NAMES = ("Ravenscroft^Ottilie", "Pennywhistle^Barnaby", "Thistlewood^Marguerite", "Quenby^Idris")


def chest(name: str, patient_id: str, birth: str = "19700101", **uids: str) -> Dataset:
    dataset = make_dataset(
        grey_pixels(fixture_images()[0]), patient_name=name, patient_id=patient_id, **uids
    )
    dataset.PatientBirthDate = birth
    return dataset


def refusal(output: str) -> str:
    """The status storescu printed for a refused store, as 0xNNNN."""
    found = re.search(r"DIMSE Status\s*:\s*(0x[0-9a-fA-F]{4})", output)
    assert found, output
    return found.group(1).lower()


@pytest.fixture(scope="module")
def reviewing_node(tmp_path_factory: pytest.TempPathFactory, dcmtk: None) -> Iterator[Service]:
    node = Service(tmp_path_factory.mktemp("review"), identity_conflict_policy="review").start()
    yield node
    node.stop()


def test_conflicts_are_refused_with_readable_comments(service: Service, dicom_dir: Path) -> None:
    first = chest(NAMES[0], unique("P"))
    assert store_ok(service.store(write(first, dicom_dir)).stderr) == 1
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)

    other_study = "Study UID is on file for another Patient ID"
    cases = {
        "series": (
            chest(NAMES[1], unique("P"), study_uid=study, series_uid=series),
            "0xa778",
            other_study,
        ),
        "study": (chest(NAMES[1], unique("P"), study_uid=study), "0xa778", other_study),
        "sop": (
            chest(NAMES[1], unique("P"), sop_uid=str(first.SOPInstanceUID)),
            "0xa778",
            "SOP Instance UID is on file in another study",
        ),
        "namesake": (
            chest(NAMES[2], str(first.PatientID), "19851231"),
            "0xa779",
            "Patient ID is on file with another name or birth date",
        ),
    }
    for case, (dataset, status, comment) in cases.items():
        result = service.store(write(dataset, dicom_dir, f"{case}.dcm"), options=["-d"])
        assert store_ok(result.stderr) == 0, (case, result.stderr)
        assert refusal(result.stderr) == status, (case, result.stderr)
        assert f"[{comment}]" in result.stderr, (case, result.stderr)
    rows = [r for r in service.history() if r["study_instance_uid"] == study]
    assert [(r["sop_instance_uid"], r["patient_name"]) for r in rows] == [
        (first.SOPInstanceUID, NAMES[0])
    ]
    assert "identity conflict" in service.log()


def test_a_corrected_resend_moves_the_result_to_the_right_patient(
    service: Service, dicom_dir: Path
) -> None:
    wrong = chest(NAMES[3], unique("P"))
    assert store_ok(service.store(write(wrong, dicom_dir, "wrong.dcm")).stderr) == 1
    before = service.wait_for_status(str(wrong.SOPInstanceUID), {"triaged"})
    right_id = unique("P")
    corrected = chest(
        NAMES[2],
        right_id,
        "19600606",
        study_uid=str(wrong.StudyInstanceUID),
        series_uid=str(wrong.SeriesInstanceUID),
        sop_uid=str(wrong.SOPInstanceUID),
    )
    assert store_ok(service.store(write(corrected, dicom_dir, "right.dcm")).stderr) == 1
    (row,) = [r for r in service.history() if r["sop_instance_uid"] == wrong.SOPInstanceUID]
    assert (row["patient_id"], row["patient_name"]) == (right_id, NAMES[2])
    assert row["probability"] == before["probability"] and row["identity_conflict"] == ""
    assert service.history("--patient-id", str(wrong.PatientID)) == []
    ((action, detail),) = service.sql(
        "SELECT action, detail FROM audit_events WHERE sop_instance_uid = ?",
        str(wrong.SOPInstanceUID),
    )
    assert action == "identity_corrected" and NAMES[3] in detail and NAMES[2] in detail
    log = service.log()
    for name in NAMES:
        for part in name.split("^"):
            assert part not in log, f"patient name part {part!r} leaked into the log"


def test_under_review_both_sides_of_a_conflict_are_shown(
    reviewing_node: Service, dicom_dir: Path
) -> None:
    node = reviewing_node
    first = chest(NAMES[0], unique("P"))
    second = chest(
        '=HYPERLINK("http://x")^Formula', unique("P"), study_uid=str(first.StudyInstanceUID)
    )
    result = node.store(write(first, dicom_dir, "a.dcm"), write(second, dicom_dir, "b.dcm"))
    assert store_ok(result.stderr) == 2, result.stderr

    flagged = {r["sop_instance_uid"]: r for r in node.history("--conflicts")}
    assert set(flagged) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert flagged[first.SOPInstanceUID]["patient_name"] == NAMES[0]
    assert flagged[second.SOPInstanceUID]["patient_id"] == second.PatientID
    assert all("Study Instance UID" in r["identity_conflict"] for r in flagged.values())

    table = node.cli("history", "--format", "csv").stdout
    names = {row["patient_name"] for row in csv.DictReader(io.StringIO(table, newline=""))}
    assert '\'=HYPERLINK("http://x")^Formula' in names

    for dataset in (first, second):
        node.wait_for_status(str(dataset.SOPInstanceUID), {"triaged"})
    report = node.workdir / "conflicts.html"
    node.cli("report", "--since", "2000-01-01", "--out", str(report))
    html = report.read_text(encoding="utf-8")
    assert html.count("Identity conflict:") == 2 and "Identity conflicts" in html

    log = node.log()
    assert "stored for review, identity conflict" in log
    for name in NAMES:
        for part in name.split("^"):
            assert part not in log, f"patient name part {part!r} leaked into the log"

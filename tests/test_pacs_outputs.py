"""Results into the PACS: the running service sends a TID 1500 SR and Secondary Captures
into the original study on Debian's Orthanc, through a durable outbox.

Orthanc also receives the original images, as a PACS would have them, so that the results
can be checked to land in the same study and patient.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from conftest import ROOT, Orthanc, Service, require_tools, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from test_interop import store_ok, unique

from core.config import load_config
from core.intake import read_model_input

pytestmark = pytest.mark.interop

NAME = "Wetherby^Clementine"


def chest_study(directory: Path, count: int = 2) -> list[Path]:
    """A study whose first image is a pneumonia case, so that it is flagged."""
    images = sorted(fixture_images(), key=lambda p: p.parent.name != "PNEUMONIA")
    study, patient = generate_uid(), unique("P")
    return [
        write(
            make_dataset(
                grey_pixels(image), patient_name=NAME, patient_id=patient, study_uid=study
            ),
            directory,
        )
        for image in images[:count]
    ]


def outbox(service: Service) -> list[dict[str, Any]]:
    return json.loads(service.cli("outbox", "--format", "json").stdout)


def pacs_instances(pacs: Orthanc, study_uid: str) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> simplified tags, for every instance of the study in Orthanc."""
    studies = [
        s
        for s in pacs.get("/studies?expand")
        if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]
    instances = {}
    for study in studies:
        for instance in pacs.get(f"/studies/{study['ID']}/instances?expand"):
            tags = pacs.get(f"/instances/{instance['ID']}/simplified-tags")
            instances[tags["SOPInstanceUID"]] = tags | {"_id": instance["ID"]}
    return instances


def service_for(tmp_path: Path, pacs: Orthanc, **destination: object) -> Service:
    peer = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}
    return Service(
        tmp_path / "node",
        forward_destinations=json.dumps([peer | destination]),
        forward_interval_seconds="0.5",
        forward_retry_seconds="0.5",
        forward_retry_max_seconds="2",
        worker_study_settle_seconds="1",
    )


def test_results_arrive_in_the_study_and_survive_a_pacs_outage(
    tmp_path: Path, dcmtk: None, orthanc: Orthanc
) -> None:
    (tmp_path / "node").mkdir()
    service = service_for(tmp_path, orthanc).start()
    try:
        first = chest_study(tmp_path / "a")
        study_uid = str(dcmread(first[0]).StudyInstanceUID)
        assert store_ok(service.store(*first).stderr) == 2
        # The PACS holds the originals, as it would in a department.
        subprocess.run(
            ["storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), *map(str, first)],
            check=True,
            capture_output=True,
        )
        wait_until(
            lambda: outbox(service) and all(r["status"] == "sent" for r in outbox(service)),
            120,
            "the outputs to be sent",
        )
        sent = outbox(service)
        assert {r["kind"] for r in sent} == {"sr", "sc"}

        pacs = pacs_instances(orthanc, study_uid)
        originals = {str(dcmread(p).SOPInstanceUID) for p in first}
        results = {uid: tags for uid, tags in pacs.items() if uid not in originals}
        assert set(results) == {r["sop_instance_uid"] for r in sent}
        patient_id = str(dcmread(first[0]).PatientID)
        assert {tags["PatientID"] for tags in pacs.values()} == {patient_id}
        assert {tags["PatientName"] for tags in pacs.values()} == {NAME}

        sr_uid = next(r["sop_instance_uid"] for r in sent if r["kind"] == "sr")
        sr = hd.sr.srread(DicomBytesIO(orthanc.get(f"/instances/{results[sr_uid]['_id']}/file")))
        study_row = service.history("--level", "study")[0]
        content = json.dumps(sr.to_json_dict())
        for expected in (
            "233604007",  # pneumonia
            "52101004" if study_row["flagged"] else "2667000",  # present / absent
            study_row["model_version"],
            study_row["model_name"],
        ):
            assert expected in content, expected
        numbers = [
            float(item.MeasuredValueSequence[0].NumericValue)
            for item in sr.ContentSequence[-1].ContentSequence[0].ContentSequence
            if item.ValueType == "NUM"
        ]
        assert numbers[:2] == pytest.approx([study_row["probability"], study_row["threshold"]])

        sc_uid = next(r["sop_instance_uid"] for r in sent if r["kind"] == "sc")
        capture = dcmread(DicomBytesIO(orthanc.get(f"/instances/{results[sc_uid]['_id']}/file")))
        assert capture.BurnedInAnnotation == "YES"
        size = capture.Rows
        config = load_config(ROOT / "config.toml", environ={})
        flagged_source = first[0]
        view = read_model_input(flagged_source, config.selection, size).pixels
        banner = capture.pixel_array[: size // 12].astype(float) / 255.0
        assert np.abs(banner.mean(axis=-1) - view[: size // 12]).mean() > 0.2

        # The PACS goes down while the next study flows; nothing is lost, nothing doubled.
        orthanc.stop()
        second = chest_study(tmp_path / "b")
        assert store_ok(service.store(*second).stderr) == 2
        wait_until(
            lambda: any(r["attempts"] >= 1 and r["status"] == "pending" for r in outbox(service)),
            120,
            "a failed attempt while the PACS is down",
        )
        orthanc.start()
        wait_until(
            lambda: (
                all(r["status"] == "sent" for r in outbox(service))
                and len(outbox(service)) > len(sent)
            ),
            120,
            "the queued outputs after the PACS is back",
        )
        second_uid = str(dcmread(second[0]).StudyInstanceUID)
        queued = [r for r in outbox(service) if r["study_instance_uid"] == second_uid]
        assert set(pacs_instances(orthanc, second_uid)) == {r["sop_instance_uid"] for r in queued}
        assert len({r["sop_instance_uid"] for r in outbox(service)}) == len(outbox(service))
        for part in NAME.split("^"):
            assert part not in service.log()
    finally:
        service.stop()


def test_a_peer_that_refuses_ends_failed_with_its_reason(
    tmp_path: Path, dcmtk: None, orthanc: Orthanc
) -> None:
    (tmp_path / "node").mkdir()
    service = service_for(tmp_path, orthanc, ae_title="WRONGAE", send=["sr"])
    service.env["PNEUMOTRIAGE_FORWARD_MAX_ATTEMPTS"] = "2"
    service.start()
    try:
        assert store_ok(service.store(*chest_study(tmp_path / "a", 1)).stderr) == 1
        wait_until(
            lambda: [r for r in outbox(service) if r["status"] == "failed"],
            120,
            "the refused send to be marked failed",
        )
        (row,) = outbox(service)
        assert row["attempts"] == 2 and "rejected" in row["last_error"]
        assert "called ae title not recognised" in row["last_error"].lower()
        retried = service.cli("outbox", "--retry-failed")
        assert "queued 1 failed object(s) again" in retried.stderr
    finally:
        service.stop()


def test_the_test_pacs_starts_on_fresh_ports_when_its_port_is_taken(tmp_path: Path) -> None:
    """The fixture's answer to the race that once failed CI: another process takes the
    chosen port before Orthanc binds it, Orthanc stops at once, and a second start on new
    ports must succeed rather than fail the test that wanted a PACS."""
    require_tools("Orthanc")
    pacs = Orthanc(tmp_path / "orthanc")
    taken = pacs.dicom_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        pacs.start()
        try:
            assert pacs.dicom_port != taken
            assert pacs.get("/system")["DicomPort"] == pacs.dicom_port
            assert "already in use" in pacs.log.read_text(encoding="utf-8", errors="replace")
        finally:
            pacs.stop()


def test_exported_outputs_pass_dciodvfy(tmp_path: Path, service: Service) -> None:
    require_tools("dciodvfy")
    study = chest_study(tmp_path / "a")
    assert store_ok(service.store(*study).stderr) == 2
    study_uid = str(dcmread(study[0]).StudyInstanceUID)
    wait_until(
        lambda: [
            r
            for r in service.history("--level", "study")
            if r["study_instance_uid"] == study_uid and r["status"] == "triaged"
        ],
        180,
        "the study result",
    )
    written = service.cli("export", study_uid, str(tmp_path / "out")).stdout.split()
    assert {Path(p).name.split("-")[0] for p in written} >= {"sr"}
    for path in written:
        checked = subprocess.run(["dciodvfy", path], capture_output=True, text=True, check=False)
        errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], (path, errors)
        assert NAME not in Path(path).name

"""Starting and stopping the service: split deployments, clean shutdown, nightly report,
and the whole path on PostgreSQL."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import Service, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.interop


def studies(directory: Path, count: int, patient_id: str) -> list[Path]:
    images = fixture_images()
    return [
        write(make_dataset(grey_pixels(images[i % len(images)]), patient_id=patient_id), directory)
        for i in range(count)
    ]


def acknowledged(storescu_output: str) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", storescu_output))


def test_node_and_worker_run_apart_and_the_nightly_report_fires(
    tmp_path: Path, dcmtk: None
) -> None:
    """A node alone stores without triaging; a worker alone, on the same database, triages
    what the node left and writes the nightly report at its configured minute."""
    sent = studies(tmp_path / "dicom", 3, "SPLIT1")
    node = Service(tmp_path, command="node").start()
    try:
        assert "loaded (threshold" not in node.log(), "the node alone must not load a model"
        assert acknowledged(node.store(*sent).stderr) == 3
        assert {r["status"] for r in node.history()} == {"pending"}
    finally:
        assert node.stop() == 0

    # At least a minute ahead, so the cron trigger cannot fire before the worker is up.
    nightly = (datetime.now() + timedelta(minutes=2)).replace(second=0, microsecond=0)
    worker = Service(tmp_path, command="worker", reports_nightly_at=nightly.strftime("%H:%M"))
    worker.start()
    try:
        for path in sent:
            worker.wait_for_status(path.stem, {"triaged"})
        report = wait_until(
            lambda: next(iter(worker.reports.glob("triage-*.html")), None),
            timeout=(nightly - datetime.now()).total_seconds() + 60,
            what="the nightly report",
        )
        html = report.read_text(encoding="utf-8")
        assert "SPLIT1" in html and "not a diagnosis" in html
    finally:
        assert worker.stop() == 0
    assert "DICOM node" not in worker.log()


def test_sigterm_finishes_in_flight_associations_and_loses_nothing(
    tmp_path: Path, dcmtk: None
) -> None:
    """Every instance the sender saw acknowledged is registered after a stop mid-transfer."""
    sent = studies(tmp_path / "dicom", 12, "STOP1")
    node = Service(tmp_path, command="node").start()
    sender = subprocess.Popen(
        [
            "storescu",
            "-v",
            "-nh",
            "-aet",
            "MODALITY",
            "-aec",
            "PNEUMOTRIAGE",
            "127.0.0.1",
            str(node.port),
            *map(str, sent),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: "stored " in node.log(), 30, "the first stored instance")
    assert node.process is not None
    node.process.send_signal(signal.SIGTERM)
    _, output = sender.communicate(timeout=60)
    assert node.process.wait(timeout=60) == 0
    log = node.log()
    assert "SIGTERM received" in log and "stopped" in log
    registered = {r["sop_instance_uid"] for r in node.history()}
    assert len(registered) >= acknowledged(output) >= 1
    assert [p for p in (node.storage / ".incoming").rglob("*") if p.is_file()] == []


@pytest.mark.postgres
def test_whole_path_on_postgresql(tmp_path: Path, dcmtk: None, postgres_url: str) -> None:
    service = Service(tmp_path, database_url=postgres_url).start()
    try:
        (path,) = studies(tmp_path / "dicom", 1, "PG1")
        assert acknowledged(service.store(path).stderr) == 1
        row = service.wait_for_status(path.stem, {"triaged"})
        assert row["patient_id"] == "PG1" and 0 <= row["probability"] <= 1
        report = tmp_path / "pg-report.html"
        service.cli(
            "report",
            "--since",
            (datetime.now() - timedelta(hours=1)).isoformat(),
            "--out",
            str(report),
        )
        assert "PG1" in report.read_text(encoding="utf-8")
    finally:
        assert service.stop() == 0


def test_restart_keeps_history_and_serves_again(tmp_path: Path, dcmtk: None) -> None:
    first = Service(tmp_path, command="node").start()
    (path,) = studies(tmp_path / "dicom", 1, "RESTART1")
    assert acknowledged(first.store(path).stderr) == 1
    assert first.stop() == 0
    time.sleep(0.5)
    second = Service(tmp_path, command="node")
    second.port = first.port
    second.env["PNEUMOTRIAGE_DICOM_PORT"] = str(first.port)
    second.start()
    try:
        assert second.echo().returncode == 0
        assert [r["patient_id"] for r in second.history()] == ["RESTART1"]
    finally:
        assert second.stop() == 0


def test_rejections_are_logged_with_the_reason_sent(tmp_path: Path, dcmtk: None) -> None:
    node = Service(
        tmp_path,
        command="node",
        dicom_max_associations="1",
        dicom_allowed_calling_aes="MODALITY,ECHOSCU,PYNETDICOM",
    ).start()
    try:
        assert node.echo(calling_ae="INTRUDER").returncode != 0
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(Verification)
        # An association the node has answered holds its slot until the peer has gone and
        # its thread has ended: moments, or longer on a busy machine.
        held = None

        def established() -> bool:
            nonlocal held
            held = ae.associate("127.0.0.1", node.port, ae_title="PNEUMOTRIAGE")
            return held.is_established

        wait_until(established, 10, "the rejected association's slot to be free")
        try:
            refused = node.echo()
            assert refused.returncode != 0 and "Local Limit Exceeded" in refused.stderr
        finally:
            held.release()
        wait_until(lambda: node.echo().returncode == 0, 10, "the released association's slot")
        log = node.log()
        assert "from INTRUDER (127.0.0.1) rejected: rejected permanent, calling ae title" in log
        assert "from ECHOSCU (127.0.0.1) rejected: rejected transient, local limit" in log
    finally:
        assert node.stop() == 0

"""PDUs longer than the node announced are refused from their header, not buffered."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import raw_peer
from conftest import Service
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.interop

HOSTILE_ASSOCIATIONS = 16
ANNOUNCED = 200 * 1024 * 1024
SENT_EACH = 12 * 1024 * 1024


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def send_quietly(connection: socket.socket, data: bytes) -> None:
    """The node may abort and close while this is being sent; that is the point."""
    try:
        connection.sendall(data)
    except OSError:
        return


def test_oversized_pdus_are_aborted_with_memory_bounded(tmp_path: Path, dcmtk: None) -> None:
    node = Service(tmp_path, command="node").start()
    try:
        assert node.process is not None and node.echo().returncode == 0
        baseline = rss_mib(node.process.pid)

        hostile = [raw_peer.associate(node.port, Verification) for _ in range(HOSTILE_ASSOCIATIONS)]
        chunk = bytes(1024 * 1024)
        for connection in hostile:
            send_quietly(connection, raw_peer.HEADER.pack(0x04, 0, ANNOUNCED))
            for _ in range(SENT_EACH // len(chunk)):
                send_quietly(connection, chunk)
        grown = rss_mib(node.process.pid) - baseline

        answers = []
        for connection in hostile:
            connection.settimeout(10)
            answers.append(raw_peer.read_pdu(connection)[0])
            connection.close()
        assert answers == [raw_peer.A_ABORT] * HOSTILE_ASSOCIATIONS
        assert grown < 48, f"node grew by {grown:.0f} MiB holding refused PDUs"

        # The first PDU of a connection is bounded too, before any association exists.
        request = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        send_quietly(request, raw_peer.HEADER.pack(0x01, 0, ANNOUNCED) + chunk)
        assert raw_peer.read_pdu(request)[0] == raw_peer.A_ABORT
        request.close()

        image = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "dicom")
        assert "Received Store Response (Success)" in node.store(image).stderr
        log = node.log()
        assert log.count(f"announces {ANNOUNCED} bytes, more than the 262144") == 16
        assert f"A-ASSOCIATE-RQ announces {ANNOUNCED} bytes" in log
    finally:
        assert node.stop() == 0

"""Who gets an association: idle and trickling connections do not keep senders out, and
the called AE title is checked."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import raw_peer
from conftest import Service, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.interop

IDLE, TRICKLING = 50, 20
REQUEST_TIMEOUT = 5.0  # dicom.association_request_timeout_seconds, the default


def still_open(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def closed_by_node(connection: socket.socket, timeout: float) -> bool:
    connection.settimeout(timeout)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_senders_get_through_while_idle_and_trickling_connections_are_held(
    tmp_path: Path, dcmtk: None
) -> None:
    node = Service(tmp_path, command="node").start()
    image = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "dicom")
    request = raw_peer.association_request(Verification, calling_ae="TRICKLER")
    stop = threading.Event()

    def trickle(connections: list[socket.socket]) -> None:
        """One byte of a valid A-ASSOCIATE-RQ per connection every second."""
        for position in range(len(request)):
            for connection in connections:
                try:
                    connection.send(request[position : position + 1])
                except OSError:
                    continue
            if stop.wait(1):
                return

    try:
        opened = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(IDLE)]
        trickling = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(TRICKLING)]
        trickler = threading.Thread(target=trickle, args=(trickling,))
        trickler.start()

        echo = node.echo()
        stored = node.store(image)
        took = time.monotonic() - opened
        assert echo.returncode == 0, echo.stderr
        assert "Received Store Response (Success)" in stored.stderr, stored.stderr
        assert took < REQUEST_TIMEOUT, f"the sender needed {took:.1f} s"
        assert all(still_open(c) for c in idle + trickling), "closed before the sender ran"

        deadline = opened + REQUEST_TIMEOUT + 5
        for connection in idle + trickling:
            assert closed_by_node(connection, max(deadline - time.monotonic(), 0.5))
        reason = f"no complete A-ASSOCIATE-RQ within {REQUEST_TIMEOUT:g} s"
        assert node.log().count(f"closed before association: {reason}") == IDLE + TRICKLING
    finally:
        stop.set()
        assert node.stop() == 0


def test_an_association_trickling_a_pdu_is_closed_after_the_network_timeout(
    tmp_path: Path, dcmtk: None
) -> None:
    """Each byte comes sooner than the network timeout, the whole PDU never does."""
    node = Service(tmp_path, command="node", dicom_network_timeout_seconds="2").start()
    try:
        connection = raw_peer.associate(node.port, Verification)
        pdu = raw_peer.HEADER.pack(0x04, 0, 64) + bytes(64)
        started = time.monotonic()
        for position in range(len(pdu)):
            try:
                connection.send(pdu[position : position + 1])
            except OSError:
                break
            time.sleep(0.5)
            if not still_open(connection):
                break
        took = time.monotonic() - started
        assert position < len(pdu) - 1, "the node read the whole trickled PDU"
        assert took < 2 + 2, f"the trickling association was held for {took:.1f} s"
        # pynetdicom's idle timer and the node's PDU deadline expire together; either
        # one's reason is logged, and no traceback.
        log = node.log()
        assert "a PDU was not complete within 2 s" in log or "Network timeout reached" in log
        assert "Traceback" not in log
        assert node.echo().returncode == 0
    finally:
        assert node.stop() == 0


def test_connections_beyond_the_pending_limit_are_refused_with_a_reason(
    tmp_path: Path, dcmtk: None
) -> None:
    node = Service(tmp_path, command="node", dicom_max_pending_connections="3").start()
    try:
        held = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(3)]
        wait_until(lambda: node.echo().returncode != 0, 10, "the pending limit to be reached")
        refused = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        refused.sendall(raw_peer.association_request(Verification))
        assert raw_peer.read_pdu(refused)[0] == 0x03, "an A-ASSOCIATE-RJ"
        assert "3 connections are already awaiting their A-ASSOCIATE-RQ" in node.log()
        for connection in held:
            connection.close()
        wait_until(lambda: node.echo().returncode == 0, 10, "the node to admit again")
    finally:
        assert node.stop() == 0


def echo_to(port: int, called_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-v", "-aec", called_ae, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_called_ae_title_is_checked_unless_configured_off(tmp_path: Path, dcmtk: None) -> None:
    for name in ("checked", "lenient"):
        (tmp_path / name).mkdir()
    node = Service(tmp_path / "checked", command="node").start()
    try:
        wrong = echo_to(node.port, "WRONG")
        assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr
        assert "rejected: rejected permanent, called ae title not recognised" in node.log()
        assert echo_to(node.port, "PNEUMOTRIAGE").returncode == 0
    finally:
        assert node.stop() == 0
    lenient = Service(
        tmp_path / "lenient", command="node", dicom_check_called_ae_title="false"
    ).start()
    try:
        assert echo_to(lenient.port, "WRONG").returncode == 0
    finally:
        assert lenient.stop() == 0

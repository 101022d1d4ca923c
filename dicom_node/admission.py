"""Admitting a connection: only a peer that promptly sends a whole A-ASSOCIATE-RQ gets in.

pynetdicom starts an association thread for every TCP connection, counts every such thread
towards `max_associations`, and its reader blocks until a PDU it has begun is complete. So
idle connections held every slot until the ACSE timeout, and connections trickling one
byte every few seconds held them for ever; no AE title is ever sent, so the calling AE
whitelist cannot help.

Here each connection first waits, outside pynetdicom, until its whole first PDU lies in
the kernel's receive buffer (looked at with MSG_PEEK, so pynetdicom later reads it
untouched and at once). It must be an A-ASSOCIATE-RQ of sane size and must be complete
within `association_request_timeout_seconds` of the connection, however slowly it is
trickled; otherwise the connection is closed with the reason logged. Only then is it
handed to pynetdicom, whose limit therefore counts associations, not bare connections.
Connections still waiting are capped at `max_pending_connections`, which bounds the
threads a flood of connections can start.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from pynetdicom.pdu import A_ASSOCIATE_RJ

from dicom_node.pdu_limit import (
    A_ASSOCIATE_RQ,
    CONTROL_PDU_BYTES,
    PDU_HEADER,
    AbortReason,
    a_abort,
)

log = logging.getLogger(__name__)


def _local_limit_rejection() -> bytes:
    """A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation related),
    local-limit-exceeded, the answer pynetdicom itself gives when its limit is reached."""
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = 0x02, 0x03, 0x02
    return pdu.encode()


A_ASSOCIATE_RJ_LOCAL_LIMIT = _local_limit_rejection()
# While part of the request has arrived but not all of it, look again this often rather
# than spin; only happens where the kernel reports a socket readable below its low mark.
_PARTIAL_RETRY_SECONDS = 0.05


class RequestRefusedError(Exception):
    """A connection that will not become an association; the message is the reason."""


class Admission:
    """Counts the connections awaiting their A-ASSOCIATE-RQ and waits for each request."""

    def __init__(self, max_pending: int, request_timeout: float) -> None:
        self.max_pending = max_pending
        self.request_timeout = request_timeout
        self._pending = 0
        self._lock = threading.Lock()

    def enter(self, connection: socket.socket, address: str) -> bool:
        """Count a new connection in, or refuse it at once when too many are waiting.

        Runs on the listening thread, before a thread is started for the connection.
        """
        with self._lock:
            admitted = self._pending < self.max_pending
            if admitted:
                self._pending += 1
        if not admitted:
            log.warning(
                "connection from %s refused: %d connections are already awaiting their "
                "A-ASSOCIATE-RQ (max_pending_connections)",
                address,
                self.max_pending,
            )
            _send_quietly(connection, A_ASSOCIATE_RJ_LOCAL_LIMIT)
        return admitted

    def await_request(self, connection: socket.socket, address: str) -> bool:
        """Wait until the connection's whole A-ASSOCIATE-RQ has arrived; False if it
        never will, after logging why. Leaves the connection counted out either way."""
        try:
            self._await_request(connection, time.monotonic() + self.request_timeout)
        except RequestRefusedError as refusal:
            log.warning("connection from %s closed before association: %s", address, refusal)
            return False
        except OSError as exc:
            log.warning("connection from %s lost before association: %s", address, exc)
            return False
        finally:
            with self._lock:
                self._pending -= 1
        return True

    def _await_request(self, connection: socket.socket, deadline: float) -> None:
        header = _peek_exactly(connection, PDU_HEADER.size, deadline, self.request_timeout)
        pdu_type, _, length = PDU_HEADER.unpack(header)
        if pdu_type != A_ASSOCIATE_RQ:
            _send_quietly(connection, a_abort(AbortReason.UNEXPECTED_PDU))
            raise RequestRefusedError(
                f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ"
            )
        if length > CONTROL_PDU_BYTES:
            _send_quietly(connection, a_abort(AbortReason.INVALID_PDU_PARAMETER_VALUE))
            raise RequestRefusedError(
                f"A-ASSOCIATE-RQ announces {length} bytes, more than {CONTROL_PDU_BYTES}"
            )
        _peek_exactly(connection, PDU_HEADER.size + length, deadline, self.request_timeout)


def _peek_exactly(connection: socket.socket, size: int, deadline: float, timeout: float) -> bytes:
    """The first `size` bytes waiting on the connection, left there for pynetdicom.

    SO_RCVLOWAT makes poll() report the socket readable only once `size` bytes (or the end
    of the stream) are there, so a trickling peer costs one wake-up, not one per byte.
    """
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    try:
        poller = select.poll()
        poller.register(connection, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise RequestRefusedError(f"no complete A-ASSOCIATE-RQ within {timeout:g} s")
            data = connection.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if len(data) == size:
                return data
            if not data:
                raise RequestRefusedError(
                    "connection closed before its A-ASSOCIATE-RQ was complete"
                )
            time.sleep(_PARTIAL_RETRY_SECONDS)
    finally:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _send_quietly(connection: socket.socket, pdu: bytes) -> None:
    """Best effort: the reason is logged in any case, and the peer may be gone already."""
    with contextlib.suppress(OSError):
        connection.sendall(pdu)

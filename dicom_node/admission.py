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

On a TLS listener the handshake comes first and falls within the same time. Encrypted bytes
cannot be peeked at, so the request is read ahead into the TLS socket instead, which hands
it to pynetdicom as if it had never been read (pdu_limit.PduLimitedSSLSocket).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import cast

from pynetdicom.pdu import A_ASSOCIATE_RJ

from core.tls import failure
from dicom_node.pdu_limit import (
    A_ASSOCIATE_RQ,
    CONTROL_PDU_BYTES,
    PDU_HEADER,
    AbortReason,
    PduLimitedSSLSocket,
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
# A socket timeout of 0 would mean non-blocking; a deadline just passed waits this little.
_MINIMUM_WAIT_SECONDS = 0.001
# How a client speaking TLS begins (a handshake record), and what OpenSSL makes of one that
# does not, such as a plain A-ASSOCIATE-RQ.
_TLS_HANDSHAKE = 0x16
_NOT_TLS = "wrong version number"


class RequestRefusedError(Exception):
    """A connection that will not become an association; the message is the reason."""


class Admission:
    """Counts the connections awaiting their A-ASSOCIATE-RQ and waits for each request."""

    def __init__(self, max_pending: int, request_timeout: float) -> None:
        self.max_pending = max_pending
        self.request_timeout = request_timeout
        self._pending = 0
        self._lock = threading.Lock()

    def enter(self, connection: socket.socket, address: str, *, answer: bool = True) -> bool:
        """Count a new connection in, or refuse it at once when too many are waiting, with
        an A-ASSOCIATE-RJ if `answer` (a TLS peer could not read one before its handshake).

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
            if answer:
                _send_quietly(connection, A_ASSOCIATE_RJ_LOCAL_LIMIT)
        return admitted

    def await_request(self, connection: socket.socket, address: str) -> bool:
        """Wait until the connection's whole A-ASSOCIATE-RQ has arrived; False if it
        never will, after logging why. Leaves the connection counted out either way."""
        deadline = time.monotonic() + self.request_timeout

        def peek(size: int) -> bytes:
            return _peek_exactly(connection, size, deadline, self.request_timeout)

        return self._admit(address, lambda: self._await_request(connection, peek))

    def await_tls_request(
        self, connection: socket.socket, address: str, context: ssl.SSLContext
    ) -> PduLimitedSSLSocket | None:
        """The same over TLS, the handshake first: the TLS socket holding the request, or
        None (the connection closed) if it never will."""
        deadline = time.monotonic() + self.request_timeout
        secure: PduLimitedSSLSocket | None = None

        def handshake_and_request() -> None:
            nonlocal secure
            secure = cast(
                PduLimitedSSLSocket,
                context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False),
            )
            _handshake(secure, deadline, self.request_timeout)
            reader = secure

            def read_ahead(size: int) -> bytes:
                return _read_ahead_exactly(reader, size, deadline, self.request_timeout)

            self._await_request(secure, read_ahead)

        if self._admit(address, handshake_and_request):
            return secure
        if secure is not None:
            secure.close()
        return None

    def _admit(self, address: str, wait: Callable[[], None]) -> bool:
        try:
            wait()
        except RequestRefusedError as refusal:
            log.warning("connection from %s closed before association: %s", address, refusal)
            return False
        except OSError as exc:
            log.warning("connection from %s lost before association: %s", address, failure(exc))
            return False
        finally:
            with self._lock:
                self._pending -= 1
        return True

    def _await_request(self, connection: socket.socket, first: Callable[[int], bytes]) -> None:
        """`first(size)` waits for the first `size` bytes of the stream and leaves them."""
        header = first(PDU_HEADER.size)
        pdu_type, _, length = PDU_HEADER.unpack(header)
        if pdu_type != A_ASSOCIATE_RQ:
            _send_quietly(connection, a_abort(AbortReason.UNEXPECTED_PDU))
            hint = " (a TLS handshake: the client speaks TLS)" if pdu_type == _TLS_HANDSHAKE else ""
            raise RequestRefusedError(
                f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ{hint}"
            )
        if length > CONTROL_PDU_BYTES:
            _send_quietly(connection, a_abort(AbortReason.INVALID_PDU_PARAMETER_VALUE))
            raise RequestRefusedError(
                f"A-ASSOCIATE-RQ announces {length} bytes, more than {CONTROL_PDU_BYTES}"
            )
        first(PDU_HEADER.size + length)


def _handshake(connection: ssl.SSLSocket, deadline: float, timeout: float) -> None:
    try:
        connection.settimeout(max(deadline - time.monotonic(), _MINIMUM_WAIT_SECONDS))
        connection.do_handshake()
    except TimeoutError:
        raise RequestRefusedError(f"no TLS handshake within {timeout:g} s") from None
    except OSError as exc:
        reason = failure(exc)
        if reason == _NOT_TLS:
            reason += " (the client does not speak TLS; plain DICOM?)"
        raise RequestRefusedError(f"TLS handshake failed: {reason}") from None


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
                raise _late(timeout)
            data = connection.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if len(data) == size:
                return data
            if not data:
                raise _closed_early()
            time.sleep(_PARTIAL_RETRY_SECONDS)
    finally:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _read_ahead_exactly(
    connection: PduLimitedSSLSocket, size: int, deadline: float, timeout: float
) -> bytes:
    """The first `size` bytes of a TLS stream, read ahead and left for pynetdicom. Each
    read waits only for what is left of the time, so trickling cannot stretch it."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _late(timeout)
        connection.settimeout(remaining)
        try:
            data = connection.read_ahead(size)
        except TimeoutError:
            raise _late(timeout) from None
        if data is None:
            raise _closed_early()
        if len(data) == size:
            return data


def _late(timeout: float) -> RequestRefusedError:
    return RequestRefusedError(f"no complete A-ASSOCIATE-RQ within {timeout:g} s")


def _closed_early() -> RequestRefusedError:
    return RequestRefusedError("connection closed before its A-ASSOCIATE-RQ was complete")


def _send_quietly(connection: socket.socket, pdu: bytes) -> None:
    """Best effort: the reason is logged in any case, and the peer may be gone already."""
    with contextlib.suppress(OSError):
        connection.sendall(pdu)

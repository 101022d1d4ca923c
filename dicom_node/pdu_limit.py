"""Refusing an oversized or endlessly trickled PDU, before any of its body is read.

pynetdicom reads every PDU whole into memory, whatever length its header announces: one
P-DATA-TF PDU announcing 200 MB was buffered whole although the node had announced a
maximum of 256 KiB. Every accepted connection is therefore a `PduLimitedSocket` (on a TLS
listener a `PduLimitedSSLSocket`), which sees each PDU header as pynetdicom reads it; when
the announced length exceeds what the node accepts, it sends an A-ABORT and reports the end
of the connection to pynetdicom instead of a single byte of the body, so pynetdicom closes
the connection as a transport failure.

pynetdicom also blocks, without a timeout, until a PDU it has begun to read is complete,
so a peer trickling a PDU a byte at a time held its association (and its thread) for
ever. Here a PDU, once begun, must be complete within the network timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from enum import IntEnum
from typing import Any

from pynetdicom.pdu import A_ABORT_RQ

log = logging.getLogger(__name__)

# PDU type, reserved byte, length of what follows the header (PS3.8 9.3).
PDU_HEADER = struct.Struct(">BBL")
A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
# Every PDU but P-DATA-TF is small: even an A-ASSOCIATE-RQ proposing 128 presentation
# contexts with 20 transfer syntaxes each stays well below this.
CONTROL_PDU_BYTES = 256 * 1024


class AbortReason(IntEnum):
    """A-ABORT reasons of the service provider (PS3.8 Table 9-26)."""

    UNEXPECTED_PDU = 0x02
    INVALID_PDU_PARAMETER_VALUE = 0x06


def a_abort(reason: AbortReason) -> bytes:
    """An A-ABORT PDU with the service provider as source, so the peer logs why; encoded by
    pynetdicom, which also decodes what the peer sends."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = int(reason)
    return pdu.encode()


def pdu_limit(pdu_type: int, pdata_bytes: int) -> int:
    """Largest length (after the 6-byte header) the node accepts for a PDU of this type.

    For P-DATA-TF it is the maximum length the node announced in its A-ASSOCIATE-AC, which
    bounds exactly that field (PS3.8 D.1); every other PDU gets CONTROL_PDU_BYTES.
    """
    return pdata_bytes if pdu_type == P_DATA_TF else CONTROL_PDU_BYTES


class _PduLimit:
    """The limits, for a plain TCP and a TLS connection alike.

    pynetdicom reads a header of 6 bytes and then the body (pdu_reading.py: in reads of
    whatever has arrived); reads are never allowed to cross a PDU boundary here, so the
    position in the stream is always known. Peeks (MSG_PEEK) are passed through untouched.
    """

    # Until `_limit`, reads pass straight through: SSLSocket reads here while it is set up.
    _limited = False
    _pdata_bytes: int
    _pdu_seconds: float
    _pdu_deadline: float | None
    _timeout: float
    _peer: str
    _header: bytearray
    _body_left: int
    _refused: bool

    def _limit(self, peer: str, pdata_bytes: int, pdu_seconds: float) -> None:
        self._pdata_bytes = pdata_bytes
        self._pdu_seconds = pdu_seconds
        self._pdu_deadline = None
        self._peer = peer
        self._header = bytearray()
        self._body_left = 0
        self._refused = False
        self._limited = True
        self._set_timeout(pdu_seconds)

    def _read_into(self, view: memoryview, flags: int) -> int:
        """The stream below the limits (a mixin: `super()` is the socket class). A read of a
        PDU begun may also time out in the socket itself, before the deadline is checked
        at the next read; both say the same in the log."""
        try:
            return super().recv_into(view, len(view), flags)
        except TimeoutError:
            if self._limited and self._pdu_deadline is not None:
                self._log_incomplete()
            raise

    def _log_incomplete(self) -> None:
        log.warning(
            "connection from %s closed: a PDU was not complete within %g s",
            self._peer,
            self._pdu_seconds,
        )

    def _set_timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self.settimeout(seconds)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer = bytearray(bufsize)
        with memoryview(buffer) as view:
            count = self.recv_into(view, bufsize, flags)
        return bytes(buffer[:count])

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Where every read of the connection comes, whichever of `recv` and `recv_into`
        pynetdicom or admission calls."""
        with memoryview(buffer) as whole:
            view = whole[: nbytes or len(whole)]
            if flags & socket.MSG_PEEK or not self._limited:
                return self._read_into(view, flags)
            if self._refused:
                return 0
            self._start_clock()
            if self._body_left:
                count = self._read_into(view[: self._body_left], flags)
                self._body_left -= count
                self._stop_clock_when_complete(count)
                return count
            count = self._read_into(view[: PDU_HEADER.size - len(self._header)], flags)
            self._header += view[:count]
        if len(self._header) < PDU_HEADER.size:
            return count
        pdu_type, _, length = PDU_HEADER.unpack(self._header)
        self._header.clear()
        limit = pdu_limit(pdu_type, self._pdata_bytes)
        if length > limit:
            self._refuse(pdu_type, length, limit)
            return 0
        self._body_left = length
        self._stop_clock_when_complete(count)
        return count

    def _start_clock(self) -> None:
        """pynetdicom reads only once data is waiting, so this runs at a PDU's first byte;
        every read of the PDU may then block only for what is left of its time. The socket's
        timeout is lowered only when that is a second or more below the one set: settimeout
        is a system call, and a PDU may take many reads."""
        now = time.monotonic()
        if self._pdu_deadline is None:
            self._pdu_deadline = now + self._pdu_seconds
        left = self._pdu_deadline - now
        if left <= 0:
            self._log_incomplete()
            raise TimeoutError(f"PDU not complete within {self._pdu_seconds:g} s")
        if left < self._timeout - 1:
            self._set_timeout(left)

    def _stop_clock_when_complete(self, count: int) -> None:
        if count and not self._body_left and not self._header:
            self._pdu_deadline = None
            if self._timeout != self._pdu_seconds:
                self._set_timeout(self._pdu_seconds)

    def _refuse(self, pdu_type: int, length: int, limit: int) -> None:
        self._refused = True
        log.warning(
            "association from %s aborted: PDU of type 0x%02X announces %d bytes, "
            "more than the %d the node accepts",
            self._peer,
            pdu_type,
            length,
            limit,
        )
        try:
            self.sendall(a_abort(AbortReason.INVALID_PDU_PARAMETER_VALUE))
        except OSError:
            log.info("A-ABORT to %s not delivered: the connection is already gone", self._peer)


class PduLimitedSocket(_PduLimit, socket.socket):
    """An accepted TCP connection that aborts the association at an oversized PDU header."""

    @classmethod
    def wrap(
        cls, connection: socket.socket, pdata_bytes: int, pdu_seconds: float
    ) -> PduLimitedSocket:
        peer = str(connection.getpeername()[0])
        limited = cls(connection.family, connection.type, connection.proto, connection.detach())
        limited._limit(peer, pdata_bytes, pdu_seconds)
        return limited


class PduLimitedSSLSocket(_PduLimit, ssl.SSLSocket):
    """An accepted TLS connection with the same limits, and the bytes it was read ahead.

    Admission cannot peek below the encryption, so it reads the A-ASSOCIATE-RQ ahead into
    this socket, which hands those bytes to pynetdicom before any more of the stream. The
    server's context makes its connections of this class (`SSLContext.sslsocket_class`).
    """

    _ahead = b""

    def limit(self, pdata_bytes: int, pdu_seconds: float) -> None:
        """Apply the limits from here on; call once the handshake is done."""
        self._limit(str(self.getpeername()[0]), pdata_bytes, pdu_seconds)

    def read_ahead(self, size: int) -> bytes | None:
        """The first `size` bytes of the stream, or fewer while they are not all in, after
        at most one read (waiting for the socket's timeout); None once the connection has
        ended before them. They stay for `recv`."""
        if len(self._ahead) < size:
            data = ssl.SSLSocket.recv(self, size - len(self._ahead))
            if not data:
                return None
            self._ahead += data
        return self._ahead[:size]

    def _read_into(self, view: memoryview, flags: int) -> int:
        if self._ahead:
            count = min(len(view), len(self._ahead))
            view[:count], self._ahead = self._ahead[:count], self._ahead[count:]
            return count
        return ssl.SSLSocket.recv_into(self, view, len(view), flags)

    def pending(self) -> int:
        """pynetdicom asks for data buffered where select() cannot see it."""
        return len(self._ahead) + super().pending()

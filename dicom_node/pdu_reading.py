"""Reading a PDU in as few reads as the connection allows.

pynetdicom reads every PDU 4 KiB at a time, in a Python loop: 2,500 reads for a 10 MB
radiograph, each a trip through the socket layers and the PDU limits, about ten times the
CPU of the reads here (`benchmarks/association_costs.py`, *Reading PDUs*). Here a PDU
is read into one buffer of its length, each read taking whatever the connection holds;
the limits in pdu_limit.py still see every read.
"""

from __future__ import annotations

import socket
from typing import cast

from pynetdicom.transport import AssociationSocket


class ChunkedAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper with its read replaced, nothing else: it holds no state
    of its own, so the node re-classes the wrapper pynetdicom builds for a connection."""

    def recv(self, nr_bytes: int) -> bytearray:
        """`nr_bytes` from the connection, or what came before it closed (pynetdicom's
        contract: a short result means the transport ended). Read into one buffer of the
        PDU's length, which pynetdicom then copies once onto the PDU's header."""
        connection = cast(socket.socket, self.socket)
        received = bytearray(nr_bytes)
        with memoryview(received) as free:
            filled = 0
            while filled < nr_bytes:
                count = connection.recv_into(free[filled:])
                if not count:
                    break
                filled += count
        del received[filled:]
        return received

"""An accepted association's two threads wait for work instead of polling for it.

pynetdicom runs two threads per association, its DUL (reading the connection and sending
PDUs) and its reactor (serving DIMSE messages), and each polls every millisecond while it
has nothing to do. Every open association then costs CPU and turns at the interpreter lock
that the associations moving data need: eight idle associations took more than half a core
of this 2-core machine (`benchmarks/association_costs.py`, *open associations doing
nothing*), which is why the node was slower with eight senders than with one.

Here, for an association the node accepted:

* the DUL waits in `poll` on the connection and on a wake-up socket that sending a PDU,
  stopping and killing write to;
* the reactor waits on its DIMSE message queue, which pynetdicom already wakes with a
  `(None, None)` when a connection ends; the node also wakes it when the DUL hands it a
  release or abort (the queue of primitives for the user, `WakingQueue`) and when the DUL
  thread ends.

Both still look at their timers (pynetdicom's ARTIM and network-timeout timers) at least
every WAIT_SECONDS. pynetdicom has no setting for any of this (pydicom/pynetdicom#102 and
#139 discuss the trade-off of its polling delay); the classes below change only the waits
and keep every check and state transition pynetdicom makes.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

# The longest an idle thread sleeps before looking at its timers again; pynetdicom polls
# every 0.001 s. Timers firing this much late matters nothing beside their seconds.
WAIT_SECONDS = 0.05
# What the reactor reads as "no message". pynetdicom puts its own (None, None) there when a
# connection ends; the node's wake-ups are this one object, so that a blocking read, which
# pynetdicom treats as a timeout when it gets (None, None), can skip them.
WAKE = tuple([None, None])


class WakingQueue(queue.Queue[Any]):
    """The DUL's queue of primitives for the reactor: each put also wakes the reactor,
    which looks for a release or abort only after its DIMSE queue returns."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self._messages = messages

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._messages.put(WAKE)


class WaitingDimse(DIMSEServiceProvider):
    """The reactor's non-blocking look for a message waits up to WAIT_SECONDS for one; a
    blocking read passes over the node's wake-ups."""

    def get_msg(self, block: bool = False) -> Any:
        if block:
            while (item := super().get_msg(block)) is WAKE:
                pass
            return item
        try:
            return self.msg_queue.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            return WAKE


class WaitingDul(DULServiceProvider):
    """The DUL, waiting in `poll` where pynetdicom would find nothing and sleep 1 ms."""

    _wake_reader: socket.socket
    _wake_writer: socket.socket
    _poller: select.poll
    _watched: int
    _wake_lock: threading.Lock

    def prepare_waits(self) -> None:
        """A wake-up socket pair and a poll object (not `select`, which fails above file
        descriptor 1023); `run` closes the pair when the thread ends."""
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._wake_lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(self._wake_reader, select.POLLIN)
        self._watched = -1

    def wake(self) -> None:
        with self._wake_lock:
            try:
                self._wake_writer.send(b"\0")
            except OSError:
                return  # already awake with bytes unread, or finished

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.wake()
        return super().stop_dul()

    def run(self) -> None:
        """The thread: pynetdicom's reactor, bound as the thread's target when the DUL was
        built (so overriding `run_reactor` would never run), then the reactor woken to see
        that the DUL has stopped, and the wake-up pair closed."""
        try:
            super().run()
        finally:
            self.assoc.dimse.msg_queue.put(WAKE)
            with self._wake_lock:
                self._wake_writer.close()
                self._wake_reader.close()

    def _is_transport_event(self) -> bool:
        """pynetdicom's check, after waiting for data or a wake-up. In Sta13 (waiting for
        the peer to close) pynetdicom closes as soon as no data is waiting: no wait there."""
        if self.state_machine.current_state != "Sta13":
            self._wait()
        return super()._is_transport_event()

    def _wait(self) -> None:
        connection = getattr(self.socket, "socket", None)
        if connection is None or connection.fileno() < 0:
            return
        pending = getattr(connection, "pending", None)
        if pending is not None and pending():
            return  # TLS data already decrypted, which select cannot see
        if self._kill_thread or not self.event_queue.empty() or not self.to_provider_queue.empty():
            return  # work waiting already: pynetdicom sleeps only once both queues are empty
        try:
            if self._watched != connection.fileno():
                self._watched = connection.fileno()
                self._poller.register(self._watched, select.POLLIN)
            self._poller.poll(WAIT_SECONDS * 1000)
        except (OSError, ValueError):
            return  # pynetdicom's own check of the connection reports what is wrong
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            return


def wait_instead_of_polling(association: Association) -> None:
    """Make an accepted association's threads wait; call before the association starts.

    pynetdicom builds the DUL and DIMSE providers inside the association and offers no way
    to choose their classes; the ones above add no state pynetdicom reads, so re-classing
    the objects just built changes only how their threads wait.
    """
    association.dimse.__class__ = WaitingDimse
    association.dul.__class__ = WaitingDul
    cast(WaitingDul, association.dul).prepare_waits()
    association.dul.to_user_queue = WakingQueue(association.dimse.msg_queue)

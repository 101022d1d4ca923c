"""One association per destination and batch: C-STORE each queued file, collect the answers.

A rejected or unreachable association answers every item with its reason, so the outbox can
show an administrator why nothing arrived (a wrong AE title, a PACS that is down, a
certificate it does not trust). A destination with `tls` is reached over DICOM TLS.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from core.config import Destination
from core.tls import failure

log = logging.getLogger(__name__)

# PS3.4 B.2.3: Success, and the three warnings under which the object is stored.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Answer:
    status: int | None
    comment: str

    @property
    def stored(self) -> bool:
        return self.status in STORED


class _TlsFailures(logging.Handler):
    """The TLS errors of one association, which pynetdicom logs but does not report: the
    outbox should say that the peer's certificate is not trusted, or that the peer wants
    ours. They are told apart from other associations' by the thread that logged them."""

    LOGGERS = ("pynetdicom.transport", "pynetdicom.dul")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._by_thread: dict[int | None, ssl.SSLError] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            self._by_thread.setdefault(record.thread, record.exc_info[1])

    def of(self, association: Association) -> ssl.SSLError | None:
        return self._by_thread.get(association.dul.ident)

    def __enter__(self) -> _TlsFailures:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def _refusal(association: Association, connected: bool, tls: ssl.SSLError | None) -> str:
    """Why no association came about; the outbox row and the log already name the peer."""
    if association.is_rejected:
        primitive = association.acceptor.primitive
        if primitive is not None:
            return f"association {primitive.result_str.lower()}: {primitive.reason_str.lower()}"
        return "association rejected"
    if tls is not None:
        return f"TLS: {failure(tls)}"
    if not connected:
        return "cannot connect"
    return "association aborted by the peer"


def send(
    calling_ae: str,
    destination: Destination,
    files: dict[int, tuple[str, Path]],
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> dict[int, Answer]:
    """`files` maps an outbox id to (SOP Class UID, path); the answer is per id. `tls` is
    the destination's client context when it has `tls` set."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({sop_class for sop_class, _ in files.values()}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    # pynetdicom reports a peer that cannot be reached as an aborted association.
    opened: list[Event] = []
    with _TlsFailures() as failures:
        association = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=(tls, destination.server_name) if tls is not None else None,
            evt_handlers=[(evt.EVT_CONN_OPEN, opened.append)],
        )
    if not association.is_established:
        reason = _refusal(association, bool(opened), failures.of(association))
        return {item: Answer(None, reason) for item in files}
    answers = {}
    try:
        for item, (_, path) in files.items():
            status = association.send_c_store(str(path))
            if "Status" not in status:
                answers[item] = Answer(None, "no answer: association aborted or timed out")
                break
            answers[item] = Answer(int(status.Status), str(status.get("ErrorComment", "")))
    finally:
        if association.is_established:
            association.release()
    for item in files:
        answers.setdefault(item, Answer(None, "not sent: the association ended"))
    return answers

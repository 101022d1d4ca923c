"""One association per destination and batch: C-STORE each queued file, collect the answers.

A rejected or unreachable association answers every item with its reason, so the outbox can
show an administrator why nothing arrived (a wrong AE title, a PACS that is down).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from core.config import Destination

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


def _refusal(association: Association) -> str:
    """Why no association came about; the outbox row and the log already name the peer."""
    if association.is_rejected:
        primitive = association.acceptor.primitive
        if primitive is not None:
            return f"association {primitive.result_str.lower()}: {primitive.reason_str.lower()}"
        return "association rejected"
    if association.is_aborted:
        return "association aborted by the peer"
    return "cannot connect"


def send(
    calling_ae: str, destination: Destination, files: dict[int, tuple[str, Path]], timeout: float
) -> dict[int, Answer]:
    """`files` maps an outbox id to (SOP Class UID, path); the answer is per id."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({sop_class for sop_class, _ in files.values()}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        reason = _refusal(association)
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

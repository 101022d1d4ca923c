"""A DICOM peer on a bare socket, for what no well-behaved sender does: stop mid-PDU,
announce a huge PDU, abort or reset half-way through a data set.

PDUs are encoded with pynetdicom's own PDU and DIMSE classes, so only the misbehaviour is
hand-made.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from dicom_node.pdu_limit import PDU_HEADER

HEADER = PDU_HEADER
A_ASSOCIATE_AC, A_ABORT = 0x02, 0x07
CONTEXT_ID = 1


def association_request(abstract_syntax: str, calling_ae: str = "RAWPEER") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = "PNEUMOTRIAGE"
    context = build_context(abstract_syntax, ExplicitVRLittleEndian)
    context.context_id = CONTEXT_ID
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.0"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def read_pdu(connection: socket.socket) -> tuple[int, bytes]:
    """The next PDU, or (0, b"") once the node has closed the connection."""
    header = _read_exactly(connection, HEADER.size)
    if len(header) < HEADER.size:
        return 0, b""
    pdu_type, _, length = HEADER.unpack(header)
    return pdu_type, _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def associate(port: int, abstract_syntax: str, timeout: float = 10) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    connection.sendall(association_request(abstract_syntax))
    pdu_type, _ = read_pdu(connection)
    assert pdu_type == A_ASSOCIATE_AC, f"association not accepted (PDU type {pdu_type})"
    return connection


def store_pdus(path: Path, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE-RQ of the file, command first."""
    dataset = dcmread(path)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(dataset, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = []
    for primitive in message.encode_msg(CONTEXT_ID, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus.append(pdu.encode())
    return pdus


def reset(connection: socket.socket) -> None:
    """Close with a TCP reset, as a crashed sender's kernel does."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()

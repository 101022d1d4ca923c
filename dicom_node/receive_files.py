"""Where a data set is written while it arrives: `storage/.receiving/`, nowhere else.

pynetdicom streams a received data set to a `NamedTemporaryFile` in the system temp folder
and has no option for the folder. That folder is read-only under the documented systemd
unit (ProtectSystem=strict), so every C-STORE failed there; elsewhere it lies outside the
storage directory's protection, and what an aborted or reset C-STORE or a crash left in it
(patient data) stayed for ever. So the node gives pynetdicom's `dimse_messages` module a
`NamedTemporaryFile` that writes here instead, with random names that carry no patient
data, removes each file once its C-STORE has been answered, removes what an association
leaves behind when its connection closes, and at start and stop what it left, and what
dead node processes of its host left. Each node process writes into a folder of its own
here (process_folders.py), since several may share the storage folder.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from pynetdicom import dimse_messages

from dicom_node.process_folders import clear_abandoned, own_folder

log = logging.getLogger(__name__)

RECEIVING = ".receiving"


class ReceiveFolder:
    """The files pynetdicom is writing, by the thread writing them.

    pynetdicom decodes an association's P-DATA on that association's DUL thread, so the
    thread that opens a file identifies the association it belongs to.
    """

    def __init__(self, storage_root: Path) -> None:
        self.root = storage_root / RECEIVING
        self.directory = own_folder(self.root)
        self._lock = threading.Lock()
        self._open: dict[str, tuple[threading.Thread, IO[Any]]] = {}

    def install(self) -> None:
        """Make pynetdicom write every received data set here (module-wide)."""
        dimse_messages.NamedTemporaryFile = self.open  # type: ignore[assignment]

    def open(self, *, delete: bool, mode: str, suffix: str) -> IO[Any]:
        """pynetdicom's call, `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`."""
        received = tempfile.NamedTemporaryFile(  # noqa: SIM115 - pynetdicom closes it
            mode=mode, suffix=suffix, prefix="receiving-", dir=self.directory, delete=delete
        )
        with self._lock:
            self._open[received.name] = (threading.current_thread(), received)
        return received

    def done(self, path: Path) -> None:
        """The C-STORE handler is finished with this file, whatever it answered."""
        with self._lock:
            self._open.pop(str(path), None)
        path.unlink(missing_ok=True)

    def discard(self, reader: threading.Thread) -> int:
        """Remove what an association's reader thread left: a data set cut off by an abort
        or reset, or one whose handler never finished."""
        with self._lock:
            left = [name for name, (owner, _) in self._open.items() if owner is reader]
            files = [self._open.pop(name)[1] for name in left]
        for received in files:
            received.close()
            Path(received.name).unlink(missing_ok=True)
        return len(files)

    def clear(self) -> int:
        """Remove this process's files here, and what dead node processes of this host left
        (a crash or kill; never acknowledged); other nodes' files are still arriving."""
        with self._lock:
            self._open.clear()
        leftovers = [path for path in self.directory.iterdir() if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers) + clear_abandoned(self.root)

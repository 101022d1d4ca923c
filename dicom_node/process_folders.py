"""A folder of its own under `.receiving/` and `.incoming/` for each node process.

Node processes share the storage folder, on one machine (`serve --nodes N`) or on several
(a shared file system). Each writes its unfinished files into a folder named for its host
and process, so that a node starting or stopping removes only what it left, or what a node
of its own host left when it died, never the files another node is receiving or staging.
The names carry no patient data.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from core.heartbeat import local_process_alive

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def _host() -> str:
    return _UNSAFE.sub("_", socket.gethostname()) or "host"


def own_folder(parent: Path) -> Path:
    """This process's folder under `parent`, created."""
    folder = parent / f"{_host()}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clear_abandoned(parent: Path) -> int:
    """Remove what dead node processes of this host left under `parent` (and loose files of
    the layout before these folders); the number of files removed. Folders of other hosts
    are theirs to clear when a node starts there."""
    removed = 0
    prefix = f"{_host()}-"
    for entry in parent.iterdir():
        if entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
            continue
        pid = entry.name.removeprefix(prefix)
        if not entry.name.startswith(prefix) or not pid.isdigit() or local_process_alive(int(pid)):
            continue
        removed += sum(1 for path in entry.rglob("*") if path.is_file())
        shutil.rmtree(entry, ignore_errors=True)
    return removed

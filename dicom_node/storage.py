"""Durable, atomic files for received instances.

A received object is moved into `.incoming/` and fsynced, then renamed into place only
while its database row is being committed, so a crash leaves either nothing or a complete
file. Names come from UIDs, which carry no patient data; anything else is hashed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from core.disk import MB, free_megabytes
from dicom_node.process_folders import clear_abandoned, own_folder

INCOMING = ".incoming"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID; non-conforming UIDs are hashed, not trusted."""
    uid = uid.strip().rstrip("\x00")
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _make_durable(path: Path) -> None:
    """Force the file to disk, then let the kernel drop its pages from the cache.

    A received file is read once more, by the worker, moments or hours later; its pages
    kept in the cache only push the cache to grow into memory the kernel has not touched
    for a while, which on a virtual machine costs a fault in the host for every page (the
    largest share of the node's CPU on a freshly started one; docs/performance.md,
    *Ingest speed*). Dropped, they are freed at once, and the next instance is written
    into them; the worker pays with a read from disk.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        with contextlib.suppress(OSError):  # advice only: a kernel may not take it
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class InstanceStore:
    def __init__(self, root: Path, min_free_mb: int = 0) -> None:
        self.root = root
        self.incoming = own_folder(root / INCOMING)
        self.min_free_mb = min_free_mb

    def shortage(self, size: int) -> int | None:
        """The megabytes that would be left after storing `size` bytes, when that is below
        `min_free_mb` (None while there is room). Checked per store rather than at the
        association, so that a sender learns it for the image it sent, and retries it."""
        free = free_megabytes(self.root)
        if free is None or not self.min_free_mb:
            return None
        left = free - size // MB
        return left if left < self.min_free_mb else None

    def discard_leftovers(self) -> int:
        """Partial files from a previous run were never acknowledged; the sender retries.
        Only this process's and dead processes' of this host: others are still staging."""
        leftovers = list(self.incoming.iterdir())
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers) + clear_abandoned(self.root / INCOMING)

    def relative_path(self, study_uid: str, sop_uid: str, version: str = "") -> str:
        """A corrected re-send gets a `version`, so the file it corrects stays as it was."""
        suffix = f".{version}" if version else ""
        return f"{safe_name(study_uid)}/{safe_name(sop_uid)}{suffix}.dcm"

    def stage(self, source: Path) -> Path:
        """Force a received file to disk and move it next to its destination.

        The node receives into `storage/.receiving/`, on the same file system, so the file
        is moved rather than copied: a copy of a 10 MB radiograph, written and fsynced a
        second time, was 78% of the C-STORE handler's time (benchmarks/stage_times.py).
        The caller's file is taken over; one on another file system is copied instead.
        """
        descriptor, name = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        os.close(descriptor)
        staged = Path(name)
        try:
            try:
                source.replace(staged)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(source, staged)
            _make_durable(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def place(self, staged: Path, relative: str) -> Path:
        """Atomically move a staged file to its final name and make the rename durable."""
        final = self.root / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(final)
        _fsync_directory(final.parent)
        return final

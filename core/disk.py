"""Free space where received files go: what the node refuses stores on, before the disk is
full, and what the status command and page report."""

from __future__ import annotations

import shutil
from pathlib import Path

MB = 1024 * 1024


def disk_space(folder: Path) -> tuple[int, int] | None:
    """Free and total bytes of the file system that holds `folder`, or will once it is
    created (its nearest existing parent's); None when that cannot be read."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return None
    return usage.free, usage.total


def free_megabytes(folder: Path) -> int | None:
    space = disk_space(folder)
    return None if space is None else space[0] // MB

"""Logging set-up shared by every command.

Records name instances by UID and studies by accession number; patient names never reach a
log. pynetdicom's own debug output can dump whole datasets, so its loggers stay at WARNING
unless the service itself runs at DEBUG.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("pynetdicom", "apscheduler", "alembic", "absl", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))

"""Logging set-up shared by every command.

Records name instances by UID and studies by accession number; patient names never reach a
log. pynetdicom's own debug output can dump whole datasets, so its loggers stay at WARNING
unless the service itself runs at DEBUG.
"""

from __future__ import annotations

import logging
import ssl

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _Formatter(logging.Formatter):
    """pynetdicom logs a failed TLS connection with a traceback from inside `ssl`, once per
    retry; the exception's own line says all an administrator can act on."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            record = logging.makeLogRecord(record.__dict__ | {"exc_info": None, "exc_text": None})
        return super().format(record)


def configure(level: str) -> None:
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Formatter(FORMAT))
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("pynetdicom", "apscheduler", "alembic", "absl", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))

"""Logging set-up shared by every command.

Records name instances by UID and studies by accession number; patient names never reach a
log. pynetdicom's own debug output can dump whole datasets, so its loggers stay at WARNING
unless the service itself runs at DEBUG. With `logging.format = "json"` each record is one
JSON object per line, for a collector that must not parse free text.
"""

from __future__ import annotations

import json
import logging
import ssl
from datetime import UTC, datetime

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, and the exception's text if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _WithoutNetworkTracebacks(logging.Filter):
    """pynetdicom logs a failed TLS connection, or a peer that stopped sending mid-PDU, with
    a traceback from inside `ssl` or the socket, once per retry; the exception's own line
    (and the node's warning beside it) says all an administrator can act on. (The record is
    changed in place: Python 3.11 cannot hand a filtered copy on.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError | TimeoutError):
            record.exc_info = record.exc_text = None
        return True


def configure(level: str, style: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if style == "json" else logging.Formatter(FORMAT))
    handler.addFilter(_WithoutNetworkTracebacks())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("pynetdicom", "apscheduler", "alembic", "absl", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))

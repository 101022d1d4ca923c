"""Records as CSV or JSON for other programs: the command line and the web export the same.

Both carry every field at full precision with ISO 8601 times; CSV is also made safe for
spreadsheets, because a patient name or a reason is whatever a modality sent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, time
from typing import Any


def _for_programs(value: Any) -> Any:
    """Full precision and ISO 8601 times with their offset, for JSON and CSV."""
    return value.isoformat() if isinstance(value, date | time) else value


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _for_spreadsheets(value: Any) -> Any:
    """A CSV cell starting like a formula is run by Excel and LibreOffice when opened, and a
    patient name or reason is whatever a modality sent; a leading apostrophe makes it text
    (OWASP's advice on CSV injection)."""
    value = _for_programs(value)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def as_json(records: Sequence[dict[str, Any]]) -> str:
    return (
        json.dumps([{k: _for_programs(v) for k, v in r.items()} for r in records], indent=2) + "\n"
    )


def as_csv(records: Sequence[dict[str, Any]], columns_when_empty: Sequence[str]) -> str:
    """RFC 4180 line ends, so a CR inside a value is quoted rather than ending the row."""
    buffer = io.StringIO()
    fieldnames = list(records[0]) if records else list(columns_when_empty)
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: _for_spreadsheets(v) for k, v in r.items()} for r in records)
    return buffer.getvalue()

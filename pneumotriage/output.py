"""Printing records as a table for people, or CSV or JSON for other programs."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.records import as_csv, as_json
from core.scores import score_text

# Columns holding a model's score: shown as the report and the web show them, never "1.000".
SCORES = frozenset({"probability", "study_probability"})


def _for_people(value: Any, column: str = "") -> str:
    """What a reader scans: local time to the minute, scores as everywhere else, three
    decimals for other numbers, a plain yes."""
    if value is None:
        return ""
    if column in SCORES and isinstance(value, float):
        return score_text(value)
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# Sentences that may wrap; every other cell is a value read at a glance (a time, an ID, a
# score) and is kept on one line, cut with an ellipsis rather than broken into fragments.
FREE_TEXT = frozenset({"note", "reason", "last_error", "error", "detail"})
# Short headers keep a table inside a 100-column terminal.
HEADERS = {
    "received_at": "received",
    "last_received_at": "received",
    "patient_id": "patient ID",
    "patient_name": "patient",
    "accession_number": "accession",
    "probability": "score",
    "next_attempt_at": "next try",
}
# Identifiers and names can be long; past these widths they end in an ellipsis (the full
# value is in CSV and JSON) so that the free text keeps room.
WIDEST = {"patient_id": 14, "patient_name": 18, "accession_number": 12, "destination": 24}


def emit(
    records: Sequence[dict[str, Any]],
    fmt: str,
    table_columns: Sequence[str],
    stream: TextIO | None = None,
) -> None:
    """Tables show the columns people scan; CSV and JSON carry every field. Table cells are
    plain text, so markup-like characters in DICOM values are shown, not interpreted."""
    stream = stream or sys.stdout
    if fmt == "json":
        stream.write(as_json(records))
    elif fmt == "csv":
        stream.write(as_csv(records, table_columns))
    else:
        # Rules only under the header: vertical borders would cost a 100-column terminal the
        # width of the free-text column.
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
            highlight=False,
        )
        for column in table_columns:
            header = HEADERS.get(column, column.replace("_", " "))
            if column in FREE_TEXT:
                table.add_column(header, overflow="fold", ratio=1, min_width=12)
            else:
                table.add_column(
                    header, no_wrap=True, overflow="ellipsis", max_width=WIDEST.get(column)
                )
        for record in records:
            table.add_row(*(Text(_for_people(record.get(c), c)) for c in table_columns))
        Console(file=stream, width=200 if not stream.isatty() else None).print(table)

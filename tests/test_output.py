"""What the command line prints for other programs: CSV that a spreadsheet opens safely."""

from __future__ import annotations

import csv
import io

from pneumotriage.output import emit


def test_csv_cells_that_look_like_formulas_are_made_text() -> None:
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
    records = [{"patient_name": name, "probability": -0.5, "reason": "ok"} for name in hostile]
    stream = io.StringIO()
    emit(records, "csv", ("patient_name",), stream)
    rows = list(csv.DictReader(io.StringIO(stream.getvalue(), newline="")))
    assert [row["patient_name"] for row in rows] == ["'" + name for name in hostile]
    # Numbers stay numbers and ordinary text is untouched.
    assert {row["probability"] for row in rows} == {"-0.5"}
    assert {row["reason"] for row in rows} == {"ok"}

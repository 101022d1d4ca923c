"""An evaluation as tables for people at a terminal; programs read the JSON instead.

Model names and paths are shown as plain text, never parsed as rich markup.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from training.data import CLASSES

HEADLINE = (
    ("accuracy", "accuracy"),
    ("auc", "ROC AUC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ece", "expected calibration error"),
)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _headline(record: dict[str, Any]) -> Table:
    title = Text(f"{record['model']} {record['model_version']}: {record['n']} images")
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("threshold (from the card)", _number(record["threshold"]))
    for key, name in HEADLINE:
        table.add_row(name, _number(record[key]))
    return table


def _confusion(record: dict[str, Any]) -> Table:
    table = Table(title="confusion matrix (rows: truth, columns: prediction)")
    table.add_column("")
    for name in CLASSES:
        table.add_column(name, justify="right")
    for name, row in zip(CLASSES, record["confusion_matrix"], strict=True):
        table.add_row(name, *(str(count) for count in row))
    return table


def _per_class(record: dict[str, Any]) -> Table:
    table = Table(title="per class")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in CLASSES:
        figures = record["per_class"][name]
        table.add_row(
            name,
            *(_number(figures[k]) for k in ("precision", "recall", "f1")),
            str(figures["support"]),
        )
    for key, name in (("macro_avg", "macro average"), ("weighted_avg", "weighted average")):
        if record[key] is not None:
            table.add_row(
                name, *(_number(record[key][k]) for k in ("precision", "recall", "f1")), ""
            )
    return table


def print_summary(
    record: dict[str, Any], plots: Sequence[Path], stream: TextIO | None = None
) -> None:
    stream = stream or sys.stdout
    console = Console(file=stream, highlight=False, width=None if stream.isatty() else 200)
    for table in (_headline(record), _confusion(record), _per_class(record)):
        console.print(table)
    for path in plots:
        console.print(f"wrote {path}", markup=False)

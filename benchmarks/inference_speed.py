"""Inference cost of shipped models on this machine, as a ratio to the seed RNN.

Two figures per model, both through core.model_store exactly as the triage worker runs it:
per-image latency (one image per call, what a radiologist waits for on an idle node) and
batch throughput (images per second when the worker hands over full batches). The machines
are shared and noisy, so absolute numbers drift between runs; every repetition measures all
models one after another, in a rotating order, and the report gives medians and the ratio
to `seed-rnn` measured in the same run, which drifts much less.

    .venv/bin/python benchmarks/inference_speed.py [--model NAME|PATH ...] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.config import DEFAULT_CONFIG, load_config
from core.model_store import LoadedModel, load_model, model_dir
from training.machine import describe
from training.markdown import table

# Issue 3: the default model must sustain at least this many images per second in batches.
REQUIRED_IMAGES_PER_SECOND = 100.0
COLUMNS = (
    "model",
    "architecture",
    "parameters",
    "latency ms",
    "latency x seed-rnn",
    "images/s",
    "images/s x seed-rnn",
    f">= {REQUIRED_IMAGES_PER_SECOND:.0f} images/s",
)


@dataclass
class Measurement:
    name: str
    model: LoadedModel
    pixels: np.ndarray
    latency_seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)

    @property
    def latency(self) -> float:
        return statistics.median(self.latency_seconds)

    @property
    def throughput(self) -> float:
        return statistics.median(self.images_per_second)


def _measure_once(item: Measurement, single_calls: int, batch_size: int) -> None:
    """One repetition: the median of several single-image calls, then one batch pass."""
    calls = []
    for index in range(single_calls):
        image = item.pixels[index % len(item.pixels)][np.newaxis]
        started = time.perf_counter()
        item.model.predict(image)
        calls.append(time.perf_counter() - started)
    item.latency_seconds.append(statistics.median(calls))
    started = time.perf_counter()
    item.model.predict(item.pixels, batch_size=batch_size)
    item.images_per_second.append(len(item.pixels) / (time.perf_counter() - started))


def measure(
    items: list[Measurement], repeats: int, single_calls: int, batch_size: int
) -> list[Measurement]:
    """Interleaved repetitions after one warm-up pass, so that slow and fast spells of the
    shared machine fall on every model alike."""
    for item in items:
        _measure_once(item, 1, batch_size)
        item.latency_seconds.clear()
        item.images_per_second.clear()
    for repeat in range(repeats):
        shift = repeat % len(items)
        for item in items[shift:] + items[:shift]:
            _measure_once(item, single_calls, batch_size)
    return items


def _rows(items: list[Measurement], baseline: Measurement) -> list[list[str]]:
    rows = []
    for item in items:
        card = item.model.card
        rows.append(
            [
                f"{item.name} ({card.version})",
                card.architecture,
                f"{card.training.get('parameters', 0):,}",
                f"{item.latency * 1000:.1f}",
                f"{item.latency / baseline.latency:.2f}",
                f"{item.throughput:.0f}",
                f"{item.throughput / baseline.throughput:.2f}",
                "yes" if item.throughput >= REQUIRED_IMAGES_PER_SECOND else "NO",
            ]
        )
    return rows


def _markdown(rows: list[list[str]], args: argparse.Namespace, command: str) -> str:
    return (
        f"### Inference speed, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"- command: `{command}`\n"
        f"- machine: {describe()}\n"
        f"- {args.repeats} interleaved repetitions; latency: median of {args.single_calls}"
        f" one-image calls per repetition; throughput: {args.images} random images in"
        f" batches of {args.batch_size}; medians over the repetitions\n\n" + table(COLUMNS, rows)
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--model", action="append", dest="models", help="name or folder (default: model.name)"
    )
    parser.add_argument("--baseline", default="seed-rnn", help="name or folder of the seed RNN")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--single-calls", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, help="(default: worker.batch_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when a measured model falls short of the required throughput."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    args.batch_size = args.batch_size or config.worker.batch_size
    rng = np.random.default_rng(args.seed)
    items: dict[Path, Measurement] = {}
    for name in [args.baseline, *(args.models or [config.model.name])]:
        folder = model_dir(config.model.directory, name).resolve()
        if folder not in items:
            model = load_model(config.model.directory, name)
            size = model.card.input_size
            pixels = rng.random((args.images, size, size), dtype=np.float32)
            items[folder] = Measurement(name, model, pixels)
    measured = measure(list(items.values()), args.repeats, args.single_calls, args.batch_size)
    rows = _rows(measured, baseline=measured[0])
    result = Table(title=Text(f"inference speed on {describe()}"))
    for column in COLUMNS:
        result.add_column(column, justify="left" if column in COLUMNS[:2] else "right")
    for row in rows:
        result.add_row(*(Text(cell) for cell in row))
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(result)
    if args.markdown:
        command = shlex.join(["python", "benchmarks/inference_speed.py", *argv])
        args.markdown.write_text(_markdown(rows, args, command), encoding="utf-8")
    return 1 if any(m.throughput < REQUIRED_IMAGES_PER_SECOND for m in measured) else 0


if __name__ == "__main__":
    sys.exit(main())

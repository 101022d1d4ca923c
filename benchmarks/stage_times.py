"""Where an instance's time goes on its way to a result: each stage of the real code, timed.

`throughput.py` says how fast the whole path is; this says why. On a throwaway SQLite
database and storage folder, with the shipped configuration and model, it runs in one
process, without the network:

* the node's C-STORE handler, `dicom_node.ingest.Receiver.receive`, on realistic files
  (`dx_files.py`: 2,000 x 2,500, 16-bit DX, 10 MB), as the node calls it once a data set
  has arrived (each file written just before, not flushed, like the node's files in
  `storage/.receiving`): header parse, staging into `.incoming` with its fsync (what
  `InstanceStore.stage` does: a move since 51a6930, a copy before), rows and commit,
  rename and folder fsync;
* a real `worker.pipeline.TriageWorker` on those instances, `run_once` called back to back
  (no scheduler interval), after one batch left out (the worker builds its heatmap graph
  at its first batch): claim, file read and parse, decode and conversion, the model with
  its heatmap in one pass, thumbnail PNG, heatmap PNG, result writes and commit, study
  settling.

What associations cost the node besides (set-up, reading PDUs, staying open) is
`association_costs.py`'s.

The timers are wrappers set on the worker and receiver objects and on the module globals
their code calls, so the service's code runs unchanged; they add microseconds per call.
A second pass over fresh instances runs under cProfile, whose functions with the most own
time are listed, to show what lies inside the stages. From the stage times it derives what
the worker could sustain back to back; `run_once` works batch after batch while anything
is pending (since 4841e8e), so `worker.interval_seconds` only adds the wait of an instance
that finds the worker idle.

    .venv/bin/python benchmarks/stage_times.py [--rounds 9] [--out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import logging
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from dx_files import DxImages  # noqa: E402
from run_facts import produced_by, revision  # noqa: E402

import core.pixels.convert  # noqa: E402
import dicom_node.ingest  # noqa: E402
import worker.pipeline  # noqa: E402
from core.config import Config, load_config  # noqa: E402
from core.db.engine import make_engine, make_session_factory  # noqa: E402
from core.db.migrate import upgrade  # noqa: E402
from core.model_store import load_model  # noqa: E402
from dicom_node.storage import InstanceStore  # noqa: E402
from training.machine import describe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stage_times.md"
PROFILE_LINES = 15
EM_SPACE = "\u2003"
COLUMNS = ("stage", "wall ms per instance", "CPU ms per instance", "share of wall")
Row = tuple[str, str, str, str]


class Stopwatch:
    """Wall and CPU seconds per named stage, accumulated by wrapped callables, one lap per
    round. CPU is the whole process's, so that TensorFlow's own threads count; nothing else
    runs in this process meanwhile. Wall minus CPU is mostly waiting for the disk."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.laps: list[tuple[dict[str, float], dict[str, float]]] = []

    def lap(self) -> None:
        self.laps.append((dict(self.wall), dict(self.cpu)))
        self.wall.clear()
        self.cpu.clear()

    def subtract(self, stage: str, part: str) -> None:
        """For a timer that includes another one shown apart."""
        self.wall[stage] -= self.wall[part]
        self.cpu[stage] -= self.cpu[part]

    def median_ms(self, stage: str, instances: int, cpu: bool = False) -> float:
        """Median over laps of a stage's time per instance, in milliseconds."""
        times = (lap[1 if cpu else 0].get(stage, 0.0) for lap in self.laps)
        return statistics.median(times) / instances * 1000

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, used = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - started
                self.cpu[name] += time.process_time() - used

        return timed

    def patch(self, owner: object, attribute: str, name: str) -> None:
        setattr(owner, attribute, self.wrap(name, getattr(owner, attribute)))


class TimedHeatmaps:
    """Stands in for the worker's cached `heatmaps`, timing `explain`."""

    def __init__(self, inner: Any, stopwatch: Stopwatch) -> None:
        self.explain = stopwatch.wrap("model + heatmap (one pass)", inner.explain)


def config_for(folder: Path) -> Config:
    return load_config(
        ROOT / "config.toml",
        {
            "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{folder / 'pneumotriage.db'}",
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(folder / "storage"),
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(folder / "reports"),
        },
    )


def receive(receiver: dicom_node.ingest.Receiver, files: list[Path]) -> None:
    """Hands each file to the handler as the node does with the file pynetdicom has just
    streamed to `storage/.receiving` (same file system, not yet on disk); the handler may
    take it over."""
    for path in files:
        outcome = receiver.receive(path, ExplicitVRLittleEndian, "BENCHMARK", path.stem)
        if outcome.status:
            raise RuntimeError(f"node refused {path.stem}: {outcome.comment}")


def run_to_empty(triage: worker.pipeline.TriageWorker, count: int) -> None:
    settled = 0
    while settled < count:
        done = triage.run_once()
        if not done:
            raise RuntimeError(f"worker stopped after {settled} of {count} instances")
        settled += done


# Stages in the order they run; indented ones are parts of the stage above them.
NODE_STAGES = [
    ("receive (whole handler)", "receive"),
    ("  parse header", "parse header"),
    ("  stage into .incoming + fsync", "stage + fsync"),
    ("  rows + commit", "register"),
    ("  rename + folder fsync", "rename + fsync"),
]
WORKER_STAGES = [
    ("run_once (whole)", "run_once"),
    ("  claim (+ commit)", "claim"),
    ("  prepare", "prepare"),
    ("    read and parse file", "read"),
    ("    decode + convert", "convert"),
    ("  infer", "infer"),
    ("    model + heatmap (one pass)", "model + heatmap (one pass)"),
    ("    thumbnail PNG", "thumbnail PNG"),
    ("    heatmap PNG", "heatmap PNG"),
    ("  write results (+ commit)", "write"),
    ("  settle studies", "settle"),
]


def measure(
    folder: Path, images: DxImages, rounds: int, console: Console
) -> tuple[Stopwatch, Stopwatch, Config, str]:
    config = config_for(folder)
    engine = make_engine(config.database.url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    store = InstanceStore(config.storage.directory, config.storage.min_free_mb)
    receiver = dicom_node.ingest.Receiver(store, sessions, config.identity.conflict_policy)
    model = load_model(config.model.directory, config.model.name)
    triage = worker.pipeline.TriageWorker(config, sessions, model)
    batch = config.worker.batch_size
    console.print("warm-up batch (heatmap graph built), not counted")
    receive(receiver, images.write(folder / "warmup", batch))
    run_to_empty(triage, batch)

    node, work = Stopwatch(), Stopwatch()
    node.patch(receiver, "receive", "receive")
    node.patch(receiver, "_register", "register")
    node.patch(store, "stage", "stage + fsync")
    node.patch(store, "place", "rename + fsync")
    node.patch(dicom_node.ingest, "dcmread", "parse header")
    for attribute, name in (
        ("run_once", "run_once"),
        ("_claim", "claim"),
        ("_prepare", "prepare"),
        ("_infer", "infer"),
        ("_write", "write"),
        ("_settle_studies", "settle"),
    ):
        work.patch(triage, attribute, name)
    triage.heatmaps = TimedHeatmaps(triage.heatmaps, work)
    work.patch(core.pixels.convert, "read_dicom", "read")
    work.patch(core.pixels.convert, "convert_dataset", "convert")
    work.patch(worker.pipeline, "png_thumbnail", "thumbnail PNG")
    work.patch(worker.pipeline, "map_png", "heatmap PNG")

    console.print(f"timed: {rounds} rounds of {batch} instances, node handler then worker")
    for number in range(rounds):
        receive(receiver, images.write(folder / f"timed-{number}", batch))
        # The node's "register" timer includes the rename it calls; the table shows them apart.
        node.subtract("register", "rename + fsync")
        node.lap()
        run_to_empty(triage, batch)
        work.lap()

    console.print(f"profiled: {batch * 2} more instances under cProfile")
    receive(receiver, images.write(folder / "profiled", batch * 2))
    profiler = cProfile.Profile()
    profiler.runcall(run_to_empty, triage, batch * 2)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(
        PROFILE_LINES
    )
    engine.dispose()
    return node, work, config, text.getvalue()


def stage_rows(stopwatch: Stopwatch, stages: list[tuple[str, str]], batch: int) -> list[Row]:
    whole = stopwatch.median_ms(stages[0][1], batch)
    return [
        (
            label,
            f"{stopwatch.median_ms(key, batch):.1f}",
            f"{stopwatch.median_ms(key, batch, cpu=True):.1f}",
            f"{stopwatch.median_ms(key, batch) / whole:.0%}",
        )
        for label, key in stages
    ]


def capacity_lines(work: Stopwatch, config: Config) -> list[str]:
    batch = config.worker.batch_size
    per_instance = work.median_ms("run_once", batch) / 1000
    per_batch = per_instance * batch
    interval = config.worker.interval_seconds
    return [
        f"back to back, the worker settles {1 / per_instance:.1f} instances/s"
        f" ({per_batch:.2f} s per batch of {batch}), CPU-bound: about"
        f" {work.median_ms('run_once', batch, cpu=True):.0f} ms of CPU per instance.",
        f"an instance that finds the worker idle waits up to worker.interval_seconds ="
        f" {interval:g} s before it is claimed, then about {per_batch:.2f} s for its batch.",
    ]


def markdown(
    tables: list[tuple[str, list[Row]]],
    lines: list[str],
    profile: str,
    command: str,
    setup: str,
) -> str:
    out = [*produced_by("Stage times", command), setup, ""]
    for title, rows in tables:
        out += [
            f"## {title}",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "| --- | ---: | ---: | ---: |",
        ]
        # Markdown drops leading spaces in a cell; em spaces keep the stages' nesting.
        out += [
            f"| {EM_SPACE * ((len(label) - len(label.lstrip())) // 2)}{label.strip()}"
            f" | {' | '.join(values)} |"
            for label, *values in rows
        ]
        out.append("")
    out += ["## Capacity", "", *[f"- {line}" for line in lines], ""]
    out += [f"## cProfile, top {PROFILE_LINES} by own time", "", "```", profile.strip(), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed batches (default 9)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=120)
    commit = revision()
    console.print("making realistic radiographs")
    images = DxImages.make()
    try:
        with tempfile.TemporaryDirectory(prefix="stage-times-") as temporary:
            node, work, config, profile = measure(Path(temporary), images, args.rounds, console)
    except RuntimeError as exc:
        console.print(f"stage times: {exc}", style="red", markup=False, soft_wrap=True)
        return 2
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {commit} on {describe()},"
        f" load average {os.getloadavg()[0]:.1f} at the end; model {config.model.name}"
        f" with heatmaps, SQLite; {args.rounds} rounds, each one batch of"
        f" {config.worker.batch_size} instances of {images.file_megabytes:.0f} MB"
        f" ({images.columns} x {images.rows}, 16-bit DX) through the node handler and then"
        " the worker; ms per instance are medians over the rounds, the shares are of the"
        " median whole, and CPU is the process's (TensorFlow's threads included)."
    )
    tables = [
        (
            "Node: C-STORE handler, after the data set has arrived",
            stage_rows(node, NODE_STAGES, config.worker.batch_size),
        ),
        (
            "Worker: run_once back to back",
            stage_rows(work, WORKER_STAGES, config.worker.batch_size),
        ),
    ]
    lines = capacity_lines(work, config)
    for title, rows in tables:
        table = Table(title=title, title_justify="left")
        for k, heading in enumerate(COLUMNS):
            table.add_column(heading, justify="right" if k else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for line in lines:
        console.print(line)
    print(profile)
    command = shlex.join([".venv/bin/python", "benchmarks/stage_times.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(tables, lines, profile, command, setup))
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

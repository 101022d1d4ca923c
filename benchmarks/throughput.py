"""Whole-path speed of `pneumotriage serve`: sustained instances/s, and latency at a steady load.

Issue 11 asks two things of the node and the worker together, with the shipped default model
(cnn-lstm-ensemble, under TensorFlow on this CPU) and its heatmap, on SQLite, on this 2-core
machine:

* sustained: at least 20 instances/s from the first byte sent to the last result recorded;
* latency: at a steady offered load of 10 instances/s, the 95th percentile of the time from
  receipt to result under 3 s.

Each part runs a fresh `pneumotriage serve` (node and web application in one process,
`worker.processes` workers in others) with the shipped `config.toml` and only the changes
given here (a `PNEUMOTRIAGE_*` variable of the caller's shell is left out), a throwaway
SQLite database and folders, and realistic files (`dx_files.py`: 2,000 x 2,500, 16-bit DX, 10 MB,
a new patient each). A batch per worker process is sent first and its results waited for,
and left out: a worker builds its heatmap graph at its first batch.

* burst: `--burst` instances sent at once by `--senders` storescu processes, one
  association each; timed from the start of the first storescu to the last result's
  `results.created_at`. When the last instance was received (`instances.received_at`) is
  given too, so that ingest and triage can be told apart.
* paced: one storescu per instance, started on a timer at `--rate` per second for
  `--seconds`, as a modality sends each image as it is taken; per instance the time from
  receipt to result (`results.created_at - instances.received_at`, both written by the
  service) as p50, p95 and max, beside the time from the start of its storescu to its
  result, which is what the sender's site waits. A store the service refuses (an
  association over `dicom.max_associations`, say) is counted, not retried.

Both parts also give the CPU time the service's processes used per instance (two cores
give 2 CPU-seconds per second), and every stored instance must end triaged with a heatmap.
Speed here is absolute rather than a ratio to a reference, since the goals are; the CPU time
per instance says how many cores a rate needs. The worker's settings (`--interval-seconds`,
`--batch-size`, and `--workers` for `worker.processes`) and the node processes (`--nodes`,
as `serve --nodes N`) can be changed to see what the shipped settings cost; the results
name the settings used. Exit status 1 when a goal is missed, 2 when something the
benchmark needs is missing or broken.

    .venv/bin/python benchmarks/throughput.py [--burst 300] [--senders 4] [--rate 10]
        [--seconds 60] [--interval-seconds S] [--batch-size N] [--nodes N] [--workers M]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from dx_files import DxImages  # noqa: E402
from run_facts import (  # noqa: E402
    SetupError,
    machine,
    produced_by,
    revision,
    tree_cpu_seconds,
)

from core.config import Config, ConfigError, load_config  # noqa: E402
from core.db.engine import make_engine  # noqa: E402
from core.db.schema import Instance, InstanceStatus, Result  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "throughput.md"
# Issue 11, on this 2-core machine.
GOAL_PER_SECOND = 20.0
GOAL_P95_SECONDS = 3.0
START_SECONDS = 180
DONE = (InstanceStatus.TRIAGED, InstanceStatus.REJECTED)
READY = "pneumotriage.service: ready"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank, so that a reported percentile is a time some instance really took."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True)
class Settings:
    """What is changed from the shipped configuration: `worker.*` keys, and node processes
    (`serve --nodes`)."""

    worker: dict[str, str]
    nodes: int

    @property
    def environment(self) -> dict[str, str]:
        return {f"PNEUMOTRIAGE_WORKER_{key.upper()}": value for key, value in self.worker.items()}

    @functools.cached_property
    def config(self) -> Config:
        """The shipped file with these changes alone (the service is started with them
        alone too); raises ConfigError for a value the service would refuse."""
        return load_config(ROOT / "config.toml", self.environment)

    def describe(self) -> str:
        worker, shipped = self.config.worker, load_config(ROOT / "config.toml", {}).worker
        changed = [
            f"worker.{key}"
            for key in sorted(self.worker)
            if getattr(worker, key) != getattr(shipped, key)
        ]
        changed += ["node processes"] if self.nodes > 1 else []
        return (
            f"model {self.config.model.name} with heatmaps; worker.interval_seconds ="
            f" {worker.interval_seconds:g}, worker.batch_size = {worker.batch_size},"
            f" {self.nodes} node and {worker.processes} worker process(es)"
            f" ({', '.join(changed) + ' changed' if changed else 'as shipped'}); SQLite"
        )


class Serve:
    """`pneumotriage serve` on a throwaway SQLite database, free ports and its own folders,
    with the settings given."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        folder.mkdir()
        self.log = folder / "serve.log"
        self.port = free_port()
        url = f"sqlite:///{folder / 'pneumotriage.db'}"
        self.env = {
            # An override left in the caller's shell would run other settings than named.
            **{k: v for k, v in os.environ.items() if not k.startswith("PNEUMOTRIAGE_")},
            "PNEUMOTRIAGE_DICOM_PORT": str(self.port),
            "PNEUMOTRIAGE_WEB_PORT": str(free_port()),
            "PNEUMOTRIAGE_DATABASE_URL": url,
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(folder / "storage"),
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(folder / "reports"),
            **settings.environment,
        }
        self.nodes = settings.nodes
        self.workers = settings.config.worker.processes
        self.batch_size = settings.config.worker.batch_size
        self.engine: Engine = make_engine(url)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Serve:
        command = [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml")]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, "serve", "--nodes", str(self.nodes)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # `serve` and each process it starts log "ready" to the same output.
        deadline = time.monotonic() + START_SECONDS
        while self.log.read_text(errors="replace").count(READY) < self.nodes + self.workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                lines = self.log.read_text(errors="replace").strip().splitlines()
                raise SetupError(f"pneumotriage serve did not start: {lines[-1] if lines else ''}")
            time.sleep(0.5)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.engine.dispose()

    def cpu_seconds(self) -> float:
        """User and system time of the service so far: every thread, and the processes of
        `serve --nodes` and the workers."""
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def storescu(self, files: Sequence[Path], log: Path) -> subprocess.Popen:
        peer = ["-aet", "BENCHMARK", "-aec", "PNEUMOTRIAGE", "127.0.0.1", str(self.port)]
        with log.open("wb") as output:
            return subprocess.Popen(
                ["storescu", *peer, *map(str, files)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def last_warning(self) -> str:
        """The service's last warning or error: its log goes with the temporary folder, so
        a failure says in its one line what the service said."""
        warnings = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line
        ]
        return f"the service's last warning: {warnings[-1] if warnings else 'none'}"

    def failed_send(self, count: int, log: Path) -> SetupError:
        said = log.read_text(errors="replace").strip().splitlines()
        return SetupError(
            f"{count} storescu failed to send: {said[-1] if said else 'no output'};"
            f" {self.last_warning()}"
        )

    def wait_for_results(self, uids: set[str], seconds: float) -> None:
        """Until every instance is triaged or rejected; a worker slower than this allows
        is a result in itself, said in one line."""
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            with self.engine.connect() as connection:
                done = connection.execute(
                    select(func.count()).where(
                        Instance.sop_instance_uid.in_(uids), Instance.status.in_(DONE)
                    )
                ).scalar_one()
            if done == len(uids):
                return
            if self.process is not None and self.process.poll() is not None:
                raise SetupError(f"pneumotriage serve exited; {self.last_warning()}")
            time.sleep(0.5)
        raise SetupError(
            f"only {done} of {len(uids)} instances had a result after {seconds:.0f} s;"
            f" {self.last_warning()}"
        )

    def stored(self, uids: set[str]) -> set[str]:
        """Those of `uids` the node has on file."""
        with self.engine.connect() as connection:
            return set(
                connection.scalars(
                    select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(uids))
                )
            )

    def outcomes(self, uids: set[str]) -> list[Outcome]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    Instance.sop_instance_uid,
                    Instance.status,
                    Instance.received_at,
                    Result.created_at,
                    Result.heatmap_png.is_not(None),
                )
                .outerjoin(Result, Result.instance_fk == Instance.id)
                .where(Instance.sop_instance_uid.in_(uids))
            ).all()
        outcomes = [Outcome(*row) for row in rows]
        wrong = [o for o in outcomes if o.status != InstanceStatus.TRIAGED or not o.heatmap]
        if len(outcomes) != len(uids) or wrong:
            raise SetupError(
                f"{len(uids) - len(outcomes)} instance(s) missing and {len(wrong)} not triaged"
                f" with a heatmap; {self.last_warning()}"
            )
        return outcomes


@dataclass(frozen=True)
class Outcome:
    sop_instance_uid: str
    status: str
    received_at: datetime
    created_at: datetime
    heatmap: bool

    @property
    def latency(self) -> float:
        return (self.created_at - self.received_at).total_seconds()


def warm_up(serve: Serve, images: DxImages, folder: Path) -> None:
    """A batch per worker process at once: while the first to claim builds its heatmap
    graph, the next claims the next batch, so that every worker is warm before timing."""
    files = images.write(folder / "warmup", serve.batch_size * serve.workers)
    log = folder / "warmup.log"
    if serve.storescu(files, log).wait() != 0:
        raise serve.failed_send(1, log)
    serve.wait_for_results({path.stem for path in files}, START_SECONDS)
    shutil.rmtree(folder / "warmup")


@dataclass(frozen=True)
class Burst:
    instances: int
    senders: int
    received_seconds: float
    result_seconds: float
    latencies: list[float]
    cpu_per_instance: float

    @property
    def per_second(self) -> float:
        return self.instances / self.result_seconds


def burst(images: DxImages, folder: Path, count: int, senders: int, settings: Settings) -> Burst:
    files = images.write(folder / "burst", count)
    os.sync()
    uids = {path.stem for path in files}
    with Serve(folder / "serve-burst", settings) as serve:
        warm_up(serve, images, folder)
        cpu = serve.cpu_seconds()
        started = datetime.now(UTC)
        logs = [folder / f"burst-{k}.log" for k in range(senders)]
        processes = [serve.storescu(files[k::senders], logs[k]) for k in range(senders)]
        failed = [log for process, log in zip(processes, logs, strict=True) if process.wait()]
        if failed:
            raise serve.failed_send(len(failed), failed[0])
        serve.wait_for_results(uids, 120 + 2 * count)
        cpu = serve.cpu_seconds() - cpu
        outcomes = serve.outcomes(uids)
    shutil.rmtree(folder / "burst")
    return Burst(
        instances=count,
        senders=senders,
        received_seconds=(max(o.received_at for o in outcomes) - started).total_seconds(),
        result_seconds=(max(o.created_at for o in outcomes) - started).total_seconds(),
        latencies=[o.latency for o in outcomes],
        cpu_per_instance=cpu / count,
    )


@dataclass(frozen=True)
class Paced:
    offered: int
    offered_per_second: float
    refused: int
    refusal: str
    latencies: list[float]
    send_to_result: list[float]
    drain_seconds: float
    cpu_per_instance: float

    @property
    def met(self) -> bool:
        return not self.refused and percentile(self.latencies, 0.95) < GOAL_P95_SECONDS


def paced(images: DxImages, folder: Path, rate: float, seconds: float, settings: Settings) -> Paced:
    """One storescu per instance, each started at its due time whatever the others are
    doing; a sent file is removed as soon as its storescu is done with it. A store the
    service refuses (e.g. an association over `dicom.max_associations`) is counted, not
    retried: it is load the service did not take at the rate it was offered."""
    count = round(rate * seconds)
    files = images.write(folder / "paced", count)
    os.sync()
    sent: dict[str, datetime] = {}
    failed: list[Path] = []
    with Serve(folder / "serve-paced", settings) as serve:
        warm_up(serve, images, folder)
        cpu = serve.cpu_seconds()
        running: list[tuple[subprocess.Popen, Path]] = []
        origin = time.perf_counter()
        for k, path in enumerate(files):
            time.sleep(max(0.0, origin + k / rate - time.perf_counter()))
            sent[path.stem] = datetime.now(UTC)
            running.append((serve.storescu([path], path.with_suffix(".log")), path))
            for process, done in [(p, f) for p, f in running if p.poll() is not None]:
                if process.returncode:
                    failed.append(done.with_suffix(".log"))
                done.unlink()
                running.remove((process, done))
        spread = time.perf_counter() - origin
        for process, done in running:
            if process.wait():
                failed.append(done.with_suffix(".log"))
            done.unlink()
        last_sent = datetime.now(UTC)
        stored = serve.stored(set(sent))
        if not stored:
            raise serve.failed_send(len(failed), failed[0])
        serve.wait_for_results(stored, 120 + 2 * count)
        cpu = serve.cpu_seconds() - cpu
        outcomes = serve.outcomes(stored)
    said = failed[0].read_text(errors="replace").strip().splitlines() if failed else [""]
    return Paced(
        offered=count,
        offered_per_second=(count - 1) / spread,
        refused=count - len(stored),
        refusal=said[-1],
        latencies=[o.latency for o in outcomes],
        send_to_result=[
            (o.created_at - sent[o.sop_instance_uid]).total_seconds() for o in outcomes
        ],
        drain_seconds=(max(o.created_at for o in outcomes) - last_sent).total_seconds(),
        cpu_per_instance=cpu / len(stored),
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {percentile(values, 0.95):.2f} / {max(values):.2f}"


def burst_rows(result: Burst) -> list[tuple[str, str]]:
    return [
        ("instances, senders", f"{result.instances}, {result.senders} storescu at once"),
        ("last instance received after", f"{result.received_seconds:.1f} s"),
        ("last result recorded after", f"{result.result_seconds:.1f} s"),
        ("sustained, first send to last result", f"{result.per_second:.1f} instances/s"),
        ("receipt to result, p50 / p95 / max", f"{spread(result.latencies)} s"),
        ("service CPU per instance", f"{result.cpu_per_instance:.3f} s"),
        (
            f"goal: >= {GOAL_PER_SECOND:g} instances/s",
            "met" if result.per_second >= GOAL_PER_SECOND else "MISSED",
        ),
    ]


def paced_rows(result: Paced) -> list[tuple[str, str]]:
    refused = f"{result.refused} ({result.refusal})" if result.refused else "0"
    return [
        ("instances offered, rate", f"{result.offered}, {result.offered_per_second:.2f} per s"),
        ("stores refused by the service", refused),
        ("receipt to result, p50 / p95 / max (stored)", f"{spread(result.latencies)} s"),
        ("storescu start to result, p50 / p95 / max", f"{spread(result.send_to_result)} s"),
        ("last result after the last send", f"{result.drain_seconds:.1f} s"),
        ("service CPU per stored instance", f"{result.cpu_per_instance:.3f} s"),
        (f"goal: p95 < {GOAL_P95_SECONDS:g} s, none refused", "met" if result.met else "MISSED"),
    ]


def markdown(
    parts: list[tuple[str, list[tuple[str, str]]]], command: str, setup: str, commit: str
) -> str:
    out = [
        *produced_by("Whole-path speed", command),
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {commit} on {machine()}; {setup}.",
        "",
    ]
    for title, rows in parts:
        out += [f"## {title}", "", "| measure | value |", "| --- | ---: |"]
        out += [f"| {name} | {value} |" for name, value in rows]
        out.append("")
    return "\n".join(out)


def show(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=300, help="instances (default 300)")
    parser.add_argument("--senders", type=int, default=4, help="for the burst (default 4)")
    parser.add_argument("--rate", type=float, default=10.0, help="instances/s (default 10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="paced (default 60)")
    parser.add_argument("--interval-seconds", help="worker.interval_seconds (default: shipped)")
    parser.add_argument("--batch-size", help="worker.batch_size (default: shipped)")
    parser.add_argument(
        "--nodes", type=int, default=1, help="node processes, `serve --nodes` (default 1)"
    )
    parser.add_argument("--workers", help="worker processes, worker.processes (default: shipped)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    counts = (args.burst, args.senders, args.nodes)
    if min(counts) < 1 or min(args.rate, args.seconds) <= 0:
        parser.error("--burst, --senders, --nodes, --rate and --seconds must be positive")
    worker = {
        key: value
        for key, value in (
            ("interval_seconds", args.interval_seconds),
            ("batch_size", args.batch_size),
            ("processes", args.workers),
        )
        if value is not None
    }
    settings = Settings(worker, args.nodes)
    console = Console(width=120)
    if shutil.which("storescu") is None:
        console.print("throughput benchmark: storescu not installed: `sudo apt-get install dcmtk`")
        return 2
    try:
        setup = settings.describe()
    except ConfigError as exc:
        console.print(f"throughput benchmark: {exc}", style="red", markup=False, soft_wrap=True)
        return 2
    console.print(setup)
    commit = revision()
    parts: list[tuple[str, list[tuple[str, str]]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-bench-") as temporary:
            folder = Path(temporary)
            console.print("making realistic radiographs")
            images = DxImages.make()
            console.print(f"burst of {args.burst} with {args.senders} senders")
            sustained = burst(images, folder, args.burst, args.senders, settings)
            parts.append(("Burst: sustained instances/s", burst_rows(sustained)))
            show(console, *parts[-1])
            console.print(f"paced at {args.rate:g}/s for {args.seconds:g} s")
            steady = paced(images, folder, args.rate, args.seconds, settings)
            parts.append(
                (f"Paced: latency at {args.rate:g} instances/s offered", paced_rows(steady))
            )
            show(console, *parts[-1])
    except SetupError as exc:
        console.print(f"throughput benchmark: {exc}", style="red", markup=False, soft_wrap=True)
        return 2
    command = shlex.join([".venv/bin/python", "benchmarks/throughput.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(parts, command, setup, commit))
    console.print(f"written to {args.out}")
    return 0 if sustained.per_second >= GOAL_PER_SECOND and steady.met else 1


if __name__ == "__main__":
    sys.exit(main())

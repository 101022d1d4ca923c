"""How fast the node takes in radiographs, beside DCMTK's storescp and Orthanc, in one run.

Issue 11 asks that the node keep up with the receivers a department already runs: at least
1.2 times DCMTK's `storescp` with one sender, and at least as fast as Orthanc with eight
senders at once, on SQLite and on PostgreSQL. This starts all of them on free ports, each
writing to its own temporary folder:

* `storescp --fork` as DCMTK ships it: each association in a child process, files written
  to the output folder and never fsynced (storescp has no option to), no index;
* Orthanc (Debian's `Orthanc`, no plugins) with its SQLite index and its shipped defaults,
  among them `SyncStorageArea` (files are fsynced), 4 DICOM threads and a 16 kB PDU;
* `pneumotriage node` with the shipped `config.toml`, once on SQLite and once on a
  PostgreSQL database this script creates and drops: it streams each data set to a file,
  fsyncs it, inserts its rows, renames it into place and fsyncs the folder, commits, and
  only then answers Success. With `--node-processes N`, also N node processes sharing one
  port (`dicom.reuse_port`, as `serve --nodes N` runs them) on each database, a database
  of their own, taking turns at registering through its lock.

Every receiver gets the same realistic files (`dx_files.py`: 2,000 x 2,500, 16-bit DX,
Explicit VR Little Endian, 10 MB each), sent by DCMTK's `storescu`: one process sending
them all over one association, and eight processes sending an eighth each at once. Each
round makes new files (new UIDs: a second copy of an instance is no new work) and sends
them to every receiver in turn, in an order that rotates from round to round, so that the
shared machine's slow and fast spells fall on all alike. A send is timed from the start of
the first `storescu` to the exit of the last, and counts only when the receiver then holds
every instance. Between sends, outside the timing, the received files are removed and the
page cache flushed (`sync`), so that no receiver pays for the previous one's writes.

The table gives the median over rounds; the verdict is on the ratio of medians to the
reference measured in the same rounds. The exit status is 1 when a goal is missed.

    .venv/bin/python benchmarks/ingest.py [--rounds 5] [--instances 48]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres | --no-postgres]
        [--node-processes N]
"""

from __future__ import annotations

import argparse
import functools
import json
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
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent)]

from dx_files import DxImages  # noqa: E402
from run_facts import (  # noqa: E402
    SetupError,
    machine,
    postgres_database,
    produced_by,
    revision,
    tree_cpu_seconds,
)

RESULTS = ROOT / "benchmarks" / "results" / "ingest.md"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TOOLS = {"storescp": "dcmtk", "storescu": "dcmtk", "Orthanc": "orthanc"}
SENDER_COUNTS = (1, 8)
# Issue 11: (senders, reference, least ratio of the node's instances/s to the reference's).
GOALS = ((1, "storescp", 1.2), (8, "Orthanc", 1.0))
START_SECONDS = 120
SEND_SECONDS = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupError(f"{what} exited with status {process.returncode} at start")
        if condition():
            return
        time.sleep(0.2)
    raise SetupError(f"{what} did not start within {START_SECONDS} s")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def stop_process(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class StoreScp:
    """DCMTK's storescp, one child process per association, writing into a folder."""

    name = "storescp"
    ae_title = "STORESCP"

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "received"
        self.folder.mkdir(parents=True)
        self.log = folder / "storescp.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["storescp", "--fork", "-aet", self.ae_title, "-od", str(self.folder)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*command, str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(lambda: port_open(self.port), "storescp", self.process)

    def stored(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()

    def stop(self) -> None:
        stop_process(self.process)


class Orthanc:
    """Debian's Orthanc with its own configuration: SQLite index and storage in a temporary
    folder, free DICOM and HTTP ports, every other setting as shipped."""

    name = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.http_port = free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "pneumotriage-ingest-benchmark",
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "index"),
                    "DicomAet": self.ae_title,
                    "DicomPort": self.port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomAlwaysAllowStore": True,
                    "Plugins": [],
                }
            ),
            encoding="utf-8",
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with (self.folder / "orthanc.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._answers, "Orthanc", self.process)

    def _answers(self) -> bool:
        try:
            return bool(self._call("GET", "/system"))
        except OSError:
            return False

    def _call(self, method: str, path: str) -> object:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def stored(self) -> int:
        statistics_ = self._call("GET", "/statistics")
        assert isinstance(statistics_, dict)
        return int(statistics_["CountInstances"])

    def clear(self) -> None:
        patients = self._call("GET", "/patients")
        assert isinstance(patients, list)
        for patient in patients:
            self._call("DELETE", f"/patients/{patient}")

    def stop(self) -> None:
        stop_process(self.process)


class Node:
    """`pneumotriage node` with the shipped configuration, pointed at its own database,
    folders and port through the service's environment overrides, run in `checkout` (whose
    own packages then come first on the path); with `processes` > 1,
    that many node processes share the port (`dicom.reuse_port`, as `serve --nodes` runs
    them), the kernel spreading associations among them."""

    ae_title = "PNEUMOTRIAGE"

    def __init__(
        self,
        folder: Path,
        backend: str,
        database_url: str,
        processes: int = 1,
        checkout: Path = ROOT,
    ) -> None:
        self.name = (
            f"node ({backend})" if processes == 1 else f"node ({backend}, {processes} processes)"
        )
        self.folder = folder
        self.storage = folder / "storage"
        self.port = free_port()
        self.processes = processes
        self.checkout = checkout
        self.env = {
            **os.environ,
            "PNEUMOTRIAGE_DICOM_PORT": str(self.port),
            "PNEUMOTRIAGE_DATABASE_URL": database_url,
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(self.storage),
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(folder / "reports"),
        }
        if processes > 1:
            self.env["PNEUMOTRIAGE_DICOM_REUSE_PORT"] = "true"
        self.running: list[subprocess.Popen] = []
        self.engine = create_engine(database_url)

    def start(self) -> None:
        """One process after the other, so that only the first migrates the database."""
        command = [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml")]
        for number in range(self.processes):
            log_path = self.folder / f"node-{number}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [*command, "node"],
                    cwd=self.checkout,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.running.append(process)
            try:
                wait_until(functools.partial(self._ready, log_path), self.name, process)
            except SetupError as exc:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                raise SetupError(f"{exc}: {lines[-1] if lines else 'no output'}") from None

    @staticmethod
    def _ready(log_path: Path) -> bool:
        return "pneumotriage.service: ready" in log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(process.pid) for process in self.running)

    def stored(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM instances")).scalar_one())

    def clear(self) -> None:
        """The files only: the rows stay, as they would in a node that has run a while."""
        for path in self.storage.iterdir():
            if not path.name.startswith("."):
                shutil.rmtree(path)

    def stop(self) -> None:
        for process in self.running:
            stop_process(process)
        self.engine.dispose()


Receiver = StoreScp | Orthanc | Node


def send(files: list[Path], senders: int, receiver: Receiver, folder: Path) -> tuple[float, float]:
    """Seconds for `senders` storescu processes to send their share of `files`, and the
    receiver's CPU seconds meanwhile; raises SetupError unless every storescu exits cleanly
    and the receiver holds every instance."""
    before = receiver.stored()
    cpu = receiver.cpu_seconds()
    shares = [files[k::senders] for k in range(senders)]
    logs = [folder / f"storescu-{k}.log" for k in range(senders)]
    processes = []
    started = time.perf_counter()
    for share, log_path in zip(shares, logs, strict=True):
        with log_path.open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        "storescu",
                        "-aet",
                        "BENCHMARK",
                        "-aec",
                        receiver.ae_title,
                        "127.0.0.1",
                        str(receiver.port),
                        *map(str, share),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    for process in processes:
        process.wait(timeout=SEND_SECONDS)
    seconds = time.perf_counter() - started
    cpu = receiver.cpu_seconds() - cpu
    failed = [log for process, log in zip(processes, logs, strict=True) if process.returncode]
    if failed:
        lines = failed[0].read_text(errors="replace").strip().splitlines()
        raise SetupError(f"storescu to {receiver.name} failed: {lines[-1] if lines else '?'}")
    arrived = receiver.stored() - before
    if arrived != len(files):
        raise SetupError(f"{receiver.name} holds {arrived} of the {len(files)} instances sent")
    return seconds, cpu


@dataclass(frozen=True)
class Rate:
    """A receiver's median over rounds at one sender count."""

    receiver: str
    senders: int
    seconds: list[float]
    cpu_seconds: list[float]
    instances: int
    megabytes: float

    @property
    def cpu_ms_per_instance(self) -> float:
        return statistics.median(self.cpu_seconds) / self.instances * 1000

    @property
    def per_second(self) -> float:
        return self.instances / statistics.median(self.seconds)

    @property
    def slowest(self) -> float:
        return self.instances / max(self.seconds)

    @property
    def fastest(self) -> float:
        return self.instances / min(self.seconds)

    @property
    def megabytes_per_second(self) -> float:
        return self.megabytes / statistics.median(self.seconds)


def measure(
    receivers: list[Receiver],
    images: DxImages,
    folder: Path,
    rounds: int,
    instances: int,
    console: Console,
) -> list[Rate]:
    """A warm-up send to each receiver, not counted, then the interleaved rounds."""
    seconds: dict[tuple[str, int], list[float]] = {
        (r.name, n): [] for n in SENDER_COUNTS for r in receivers
    }
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in seconds}
    for number in range(rounds + 1):
        for senders in SENDER_COUNTS:
            count = senders if number == 0 else instances
            files = images.write(folder / "send", count)
            os.sync()
            shift = number % len(receivers)
            for receiver in receivers[shift:] + receivers[:shift]:
                taken, used = send(files, senders, receiver, folder)
                receiver.clear()
                os.sync()
                if number:
                    seconds[(receiver.name, senders)].append(taken)
                    cpu[(receiver.name, senders)].append(used)
                    console.print(
                        f"round {number}/{rounds}, {senders} sender(s), {receiver.name}:"
                        f" {count / taken:.1f} instances/s"
                    )
            shutil.rmtree(folder / "send")
    megabytes = instances * images.file_megabytes
    return [
        Rate(name, senders, taken, cpu[(name, senders)], instances, megabytes)
        for (name, senders), taken in seconds.items()
    ]


def ratio(rates: list[Rate], receiver: str, senders: int, reference: str) -> float:
    by_name = {(r.receiver, r.senders): r for r in rates}
    return by_name[(receiver, senders)].per_second / by_name[(reference, senders)].per_second


def verdicts(rates: list[Rate]) -> list[tuple[str, float, bool]]:
    """(goal, measured ratio, met) for each node and goal."""
    nodes = dict.fromkeys(r.receiver for r in rates if r.receiver.startswith("node"))
    found = []
    for node in nodes:
        for senders, reference, least in GOALS:
            measured = ratio(rates, node, senders, reference)
            goal = f"{node}, {senders} sender(s): >= {least:g} x {reference}"
            found.append((goal, measured, measured >= least))
    return found


HEADER = ["senders", "receiver", "instances/s", "range over rounds", "MB/s", "CPU ms/instance"]
# The same columns, named short enough for the table to fit a terminal 100 columns wide.
CONSOLE_HEADER = ["senders", "receiver", "inst/s", "range", "MB/s", "CPU ms"]
REFERENCES = ("storescp", "Orthanc")


def cells(rate: Rate, rates: list[Rate]) -> list[str]:
    return [
        str(rate.senders),
        rate.receiver,
        f"{rate.per_second:.1f}",
        f"{rate.slowest:.1f} - {rate.fastest:.1f}",
        f"{rate.megabytes_per_second:.0f}",
        f"{rate.cpu_ms_per_instance:.0f}",
        *(f"{ratio(rates, rate.receiver, rate.senders, name):.2f}" for name in REFERENCES),
    ]


def notes(images: DxImages, rounds: int, instances: int) -> list[str]:
    return [
        f"{instances} instances of {images.file_megabytes:.1f} MB per send ({images.columns}"
        f" x {images.rows}, 16-bit DX, Explicit VR Little Endian), {rounds} interleaved"
        " rounds after one warm-up send; median, slowest and fastest round.",
        "storescp (DCMTK as shipped, `--fork`) never fsyncs; Orthanc (SyncStorageArea) and the"
        " node fsync every file, and the node answers Success only after its row is"
        " committed.",
        "The 8 senders are 8 storescu processes, one association each; the machine's cores"
        " are shared between senders and receiver. CPU ms/instance: the receiver's processes"
        " (user and system, children included), median over rounds.",
    ]


def markdown(
    rates: list[Rate],
    found: list[tuple[str, float, bool]],
    command: str,
    lines: list[str],
    commit: str,
) -> str:
    out = [
        *produced_by("Ingest speed", command),
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {commit} on {machine()}.",
        "",
        *[f"- {line}" for line in lines],
        "",
        "| " + " | ".join([*HEADER, *(f"x {name}" for name in REFERENCES)]) + " |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *("| " + " | ".join(cells(rate, rates)) + " |" for rate in rates),
        "",
        "| goal | measured | met |",
        "| --- | ---: | --- |",
        *(f"| {goal} | {value:.3f} | {'yes' if met else 'NO'} |" for goal, value, met in found),
        "",
    ]
    return "\n".join(out)


def check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({TOOLS[tool] for tool in missing}))
        raise SetupError(
            f"{', '.join(missing)} not installed: `sudo apt-get install {packages}`"
            " (`make test` installs them)"
        )


def run(args: argparse.Namespace, console: Console) -> tuple[list[Rate], DxImages]:
    check_tools()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-bench-")))
        databases = [("SQLite", f"sqlite:///{folder / 'node-sqlite' / 'pneumotriage.db'}")]
        if args.postgres:
            databases.append(("PostgreSQL", stack.enter_context(postgres_database(args.postgres))))
        for name in ("storescp", "orthanc", "node-sqlite", "node-postgresql"):
            (folder / name).mkdir()
        receivers: list[Receiver] = [StoreScp(folder / "storescp"), Orthanc(folder / "orthanc")]
        receivers += [
            Node(folder / f"node-{backend.lower()}", backend, url) for backend, url in databases
        ]
        if args.node_processes > 1:
            shared = [("SQLite", f"sqlite:///{folder / 'node-shared-sqlite' / 'shared.db'}")]
            if args.postgres:
                shared.append(("PostgreSQL", stack.enter_context(postgres_database(args.postgres))))
            for backend, url in shared:
                place = folder / f"node-shared-{backend.lower()}"
                place.mkdir()
                receivers.append(Node(place, backend, url, args.node_processes))
        for receiver in receivers:
            stack.callback(receiver.stop)
            receiver.start()
        console.print(f"making {args.distinct} distinct radiographs")
        images = DxImages.make(args.distinct)
        rates = measure(receivers, images, folder, args.rounds, args.instances, console)
    return rates, images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=48, help="per send (default 48)")
    parser.add_argument("--distinct", type=int, default=4, help="distinct images (default 4)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=POSTGRES,
        help="PostgreSQL server; a throwaway database is made on it (default %(default)s)",
    )
    parser.add_argument("--no-postgres", dest="postgres", action="store_const", const="")
    parser.add_argument(
        "--node-processes",
        type=int,
        default=1,
        metavar="N",
        help="also N node processes sharing one port on each database (as `serve --nodes N`)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.instances < max(SENDER_COUNTS):
        parser.error(f"--rounds must be at least 1 and --instances at least {max(SENDER_COUNTS)}")
    if args.node_processes < 1:
        parser.error("--node-processes must be at least 1")
    console = Console(width=100)
    commit = revision()
    try:
        rates, images = run(args, console)
    except SetupError as exc:
        console.print(f"ingest benchmark: {exc}", style="red", markup=False, soft_wrap=True)
        return 2
    found = verdicts(rates)
    lines = notes(images, args.rounds, args.instances)
    table = Table(
        title="Ingest: " + " ".join(lines[:1]),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for k, heading in enumerate([*CONSOLE_HEADER, *(f"x {name}" for name in REFERENCES)]):
        table.add_column(heading, justify="left" if k == 1 else "right", no_wrap=True)
    for rate in rates:
        table.add_row(*cells(rate, rates))
    console.print(table)
    for line in lines[1:]:
        console.print(line)
    for goal, measured, met in found:
        console.print(f"{goal}: {measured:.3f} {'met' if met else 'MISSED'}")
    command = shlex.join([".venv/bin/python", "benchmarks/ingest.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rates, found, command, lines, commit))
    console.print(f"written to {args.out}")
    return 0 if all(met for _, _, met in found) else 1


if __name__ == "__main__":
    sys.exit(main())

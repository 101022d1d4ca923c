"""What an association costs the node apart from storing: its set-up, reading its PDUs, and
staying open.

`ingest.py` showed the node slower with eight senders than with one, and a modality that
opens an association per image paying more per image than one that sends a series over
one. This measures the three costs behind that, each beside pynetdicom as it ships where
the node replaces pynetdicom's way, in the same run:

* *set-up*: pynetdicom deep-copies the acceptor's presentation contexts for every
  association; the copy of the node's 171 contexts (`dicom_node.contexts`), in this
  process, with pynetdicom's own context objects and with the node's;
* *reading PDUs*: pynetdicom's socket wrapper reads 4 KiB at a time; this process reads
  the same P-DATA-TF PDUs of the node's announced length over loopback TCP, through the
  node's PDU limits, once with pynetdicom's wrapper and once with the node's
  (`dicom_node.pdu_reading`), and takes the reading thread's CPU;
* *in the service*: a `pneumotriage node` process with the shipped configuration: its CPU
  per `echoscu` association, per `storescu` association carrying one radiograph
  (`dx_files.py`: 2,000 x 2,500, 16-bit DX, 10 MB), and per radiograph of a series sent
  over one association; then its CPU while 0, 1, 8 and 16 associations are open and idle,
  as a sender's are between its images (pynetdicom runs two threads per association that
  poll every millisecond).

Medians over `--rounds`. CPU, not wall time, because these costs add up when senders come
at once, and the machine is shared.

    .venv/bin/python benchmarks/association_costs.py [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import functools
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from dx_files import DxImages  # noqa: E402
from ingest import Node  # noqa: E402
from run_facts import SetupError, machine, produced_by, revision  # noqa: E402

from core.config import load_config  # noqa: E402
from dicom_node.contexts import accepted_contexts  # noqa: E402
from dicom_node.pdu_limit import P_DATA_TF, PDU_HEADER, PduLimitedSocket  # noqa: E402
from dicom_node.pdu_reading import ChunkedAssociationSocket  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "association_costs.md"
COPIES = 20
PDUS = 40
ECHOES = 20
SINGLE_STORES = 8
SERIES = 16
IDLE_ASSOCIATIONS = (0, 1, 8, 16)
IDLE_SECONDS = 5.0


def thread_cpu_ms(work: Callable[[], object]) -> float:
    started = time.thread_time()
    work()
    return (time.thread_time() - started) * 1000


def pynetdicom_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """The same contexts as pynetdicom's `AE.add_supported_context` builds them."""
    ae = AE()
    for context in contexts:
        ae.add_supported_context(context.abstract_syntax, context.transfer_syntax)
    return ae.supported_contexts


def context_copy_ms(rounds: int) -> dict[str, float]:
    node = accepted_contexts()
    shipped = pynetdicom_contexts(node)

    def copies(contexts: list[PresentationContext]) -> float:
        return thread_cpu_ms(lambda: [copy.deepcopy(contexts) for _ in range(COPIES)]) / COPIES

    return {
        "pynetdicom": statistics.median(copies(shipped) for _ in range(rounds)),
        "node": statistics.median(copies(node) for _ in range(rounds)),
    }


def loopback() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return sender, accepted


def read_pdus_ms(wrapper: type[AssociationSocket], pdu_bytes: int, timeout: float) -> float:
    """CPU of the reading thread for PDUS P-DATA-TF PDUs, read the way pynetdicom's DUL
    reads each: its 6-byte header, then the rest in one call of the wrapper."""
    sender, accepted = loopback()
    limited = PduLimitedSocket.wrap(accepted, pdu_bytes, timeout)
    association = Association(AE(), "acceptor")
    reader = AssociationSocket(association, client_socket=limited)
    reader.__class__ = wrapper
    pdu = PDU_HEADER.pack(P_DATA_TF, 0, pdu_bytes) + bytes(pdu_bytes)
    writer = threading.Thread(target=lambda: sender.sendall(pdu * PDUS))
    writer.start()

    def read() -> None:
        for _ in range(PDUS):
            _, _, length = PDU_HEADER.unpack(reader.recv(PDU_HEADER.size))
            if len(reader.recv(length)) != length:
                raise SetupError("the connection ended inside a PDU")

    try:
        return thread_cpu_ms(read)
    finally:
        writer.join()
        sender.close()
        limited.close()


def reading_ms(rounds: int, pdu_bytes: int, timeout: float) -> dict[str, float]:
    return {
        name: statistics.median(read_pdus_ms(wrapper, pdu_bytes, timeout) for _ in range(rounds))
        for name, wrapper in (
            ("pynetdicom", AssociationSocket),
            ("node", ChunkedAssociationSocket),
        )
    }


class NodeProcess(Node):
    """ingest.py's node process on SQLite, of a checkout, started at once, with the DCMTK
    tools this script drives it with."""

    def __init__(self, name: str, checkout: Path, folder: Path) -> None:
        folder.mkdir(parents=True)
        super().__init__(folder, "SQLite", f"sqlite:///{folder / 'node.db'}", checkout=checkout)
        self.name = name
        try:
            self.start()
        except SetupError:
            self.stop()
            raise

    def cpu_ms(self, work: Callable[[], object]) -> float:
        used = self.cpu_seconds()
        work()
        return (self.cpu_seconds() - used) * 1000

    def dcmtk(self, tool: str, *files: Path) -> None:
        command = [tool, "-aet", "BENCHMARK", "-aec", "PNEUMOTRIAGE", "127.0.0.1", str(self.port)]
        result = subprocess.run([*command, *map(str, files)], capture_output=True, text=True)
        if result.returncode:
            lines = (result.stdout + result.stderr).strip().splitlines()
            raise SetupError(f"{tool} failed: {lines[-1] if lines else result.returncode}")

    def echo_each(self, count: int) -> None:
        for _ in range(count):
            self.dcmtk("echoscu")

    def store_each(self, files: list[Path]) -> None:
        for path in files:
            self.dcmtk("storescu", path)


SERVICE_UNITS = (
    "echo association",
    "association with one radiograph",
    "radiograph of a series over one association",
)


def service_ms(
    nodes: list[NodeProcess], folder: Path, images: DxImages, rounds: int
) -> dict[str, dict[str, float]]:
    """Per node, its CPU ms per SERVICE_UNITS; the nodes take turns within each round."""
    taken: dict[str, dict[str, list[float]]] = {
        node.name: {unit: [] for unit in SERVICE_UNITS} for node in nodes
    }
    for number in range(rounds):
        for node in nodes:
            singles = images.write(folder / f"single-{number}-{node.port}", SINGLE_STORES)
            series = images.write(folder / f"series-{number}-{node.port}", SERIES)
            units = taken[node.name]
            units[SERVICE_UNITS[0]].append(node.cpu_ms(lambda n=node: n.echo_each(ECHOES)) / ECHOES)
            units[SERVICE_UNITS[1]].append(
                node.cpu_ms(functools.partial(node.store_each, singles)) / SINGLE_STORES
            )
            units[SERVICE_UNITS[2]].append(
                node.cpu_ms(functools.partial(node.dcmtk, "storescu", *series)) / SERIES
            )
    return {
        name: {unit: statistics.median(values) for unit, values in units.items()}
        for name, units in taken.items()
    }


def idle_shares(nodes: list[NodeProcess], console: Console) -> dict[str, dict[int, float]]:
    """Per node, the share of a core it used with each count of open idle associations, held
    open for IDLE_SECONDS after a second to settle."""
    ae = AE(ae_title="BENCHMARK")
    ae.add_requested_context(Verification)
    shares: dict[str, dict[int, float]] = {node.name: {} for node in nodes}
    for count in IDLE_ASSOCIATIONS:
        for node in nodes:
            console.print(f"{node.name}: {count} idle association(s) for {IDLE_SECONDS:g} s")
            associations = [
                ae.associate("127.0.0.1", node.port, ae_title="PNEUMOTRIAGE") for _ in range(count)
            ]
            if not all(a.is_established for a in associations):
                raise SetupError(f"{node.name} refused an idle association")
            time.sleep(1)
            started = time.perf_counter()
            used = node.cpu_ms(lambda: time.sleep(IDLE_SECONDS))
            shares[node.name][count] = used / 1000 / (time.perf_counter() - started)
            for association in associations:
                association.release()
    return shares


def comparison(title: str, unit: str, measured: dict[str, float], note: str) -> list[str]:
    shipped, node = measured["pynetdicom"], measured["node"]
    return [
        f"## {title}",
        "",
        note,
        "",
        f"| | {unit} |",
        "| --- | ---: |",
        f"| pynetdicom as shipped | {shipped:.1f} |",
        f"| the node | {node:.1f} |",
        f"| pynetdicom / node | {shipped / node:.1f} x |",
        "",
    ]


def node_table(heading: str, rows: list[tuple[str, list[str]]], names: list[str]) -> list[str]:
    return [
        f"| {heading} | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        *(f"| {label} | " + " | ".join(values) + " |" for label, values in rows),
    ]


def markdown(
    copying: dict[str, float],
    reading: dict[str, float],
    service: dict[str, dict[str, float]],
    idle: dict[str, dict[int, float]],
    command: str,
    setup: str,
) -> str:
    contexts = len(accepted_contexts())
    pdu_kib = load_config(ROOT / "config.toml").dicom.announced_pdu_bytes // 1024
    names = list(service)
    out = [*produced_by("Association costs", command), setup, ""]
    out += comparison(
        "Set-up: copying the presentation contexts",
        "CPU ms per association",
        copying,
        f"`copy.deepcopy` of the {contexts} contexts the node accepts, as pynetdicom does for"
        " every association it accepts.",
    )
    out += comparison(
        "Reading PDUs",
        f"CPU ms per {PDUS} PDUs of {pdu_kib} KiB",
        reading,
        f"{PDUS} P-DATA-TF PDUs of {pdu_kib} KiB (about one 10 MB radiograph) over loopback"
        " TCP, through the node's PDU limits; the reading thread's CPU.",
    )
    out += [
        "## In the service",
        "",
        "CPU ms of the `pneumotriage node` process (shipped configuration, SQLite) per unit.",
        "",
        *node_table(
            "per",
            [(unit, [f"{service[name][unit]:.0f}" for name in names]) for unit in SERVICE_UNITS],
            names,
        ),
        "",
        "## Open associations doing nothing",
        "",
        f"CPU of the node process over {IDLE_SECONDS:g} s, as a share of one core.",
        "",
        *node_table(
            "open associations",
            [
                (str(count), [f"{idle[name][count]:.2f}" for name in names])
                for count in IDLE_ASSOCIATIONS
            ],
            names,
        ),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--reference",
        type=Path,
        help="another checkout whose node is measured beside this one in the same rounds"
        " (for example `git worktree add /tmp/before REV`)",
    )
    args = parser.parse_args(argv)
    if args.reference and not (args.reference / "pneumotriage").is_dir():
        parser.error(f"--reference {args.reference}: not a pneumotriage checkout")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    console = Console(width=120)
    commit = revision()
    dicom = load_config(ROOT / "config.toml").dicom
    console.print("copying presentation contexts")
    copying = context_copy_ms(args.rounds)
    console.print("reading PDUs")
    reading = reading_ms(args.rounds, dicom.announced_pdu_bytes, dicom.network_timeout_seconds)
    images = DxImages.make()
    try:
        with tempfile.TemporaryDirectory(prefix="association-costs-") as temporary:
            folder = Path(temporary)
            checkouts = [(f"this checkout ({commit})", ROOT)]
            if args.reference:
                checkouts.append(
                    (f"{args.reference.name} ({revision(args.reference)})", args.reference)
                )
            nodes: list[NodeProcess] = []
            try:
                for number, (name, checkout) in enumerate(checkouts):
                    nodes.append(NodeProcess(name, checkout, folder / f"node-{number}"))
                console.print("the node processes: echoes, single stores, a series")
                service = service_ms(nodes, folder, images, args.rounds)
                idle = idle_shares(nodes, console)
            finally:
                for node in nodes:
                    node.stop()
    except SetupError as exc:
        console.print(f"association costs: {exc}", style="red", markup=False, soft_wrap=True)
        return 2
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {commit} on {machine()};"
        f" medians over {args.rounds} rounds."
    )
    for title, measured in (("context copy", copying), ("reading PDUs", reading)):
        console.print(
            f"{title}: pynetdicom {measured['pynetdicom']:.1f} ms, node {measured['node']:.1f}"
            f" ms ({measured['pynetdicom'] / measured['node']:.1f} x)"
        )
    for name, units in service.items():
        for unit, value in units.items():
            console.print(f"{name}: node CPU per {unit}: {value:.0f} ms")
        for count, share in idle[name].items():
            console.print(f"{name}: {count:2d} idle associations use {share:.2f} of a core")
    command = shlex.join([".venv/bin/python", "benchmarks/association_costs.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(copying, reading, service, idle, command, setup))
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

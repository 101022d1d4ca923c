"""Fixtures that run the real service: a `pneumotriage` process, DCMTK peers, real databases."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, _config
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from core.db.engine import make_engine, make_session_factory  # noqa: E402
from core.db.migrate import upgrade  # noqa: E402
from core.db.schema import Base  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_ADMIN_URL = os.environ.get(
    "PNEUMOTRIAGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
STARTUP_SECONDS = 120
TRIAGE_SECONDS = 90


def require_tools(*tools: str) -> None:
    """Skip with the reason on a developer machine; fail in CI, where a skip would hide a gap."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = (
            f"{', '.join(missing)} not installed (Debian packages dcmtk, orthanc, dicom3tools;"
            " `make test` installs them)"
        )
        if IN_CI:
            pytest.fail(f"CI must run the interop tests: {message}")
        pytest.skip(message)


def predict(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`pneumotriage predict` as a person runs it: a process with a bare environment and no
    database (predict never needs one)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumotriage",
            "--config",
            str(ROOT / "config.toml"),
            "predict",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "PNEUMOTRIAGE_DATABASE_URL": "sqlite:////nonexistent/x.db",
        },
    )


_PORTS_GIVEN: set[int] = set()
_PORT_DRAWS = random.Random(os.getpid())


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range and not handed out before in this
    run. A port the kernel picks for bind(0) is one it also gives outgoing connections
    (storescu, the service's forwarding, database clients), so one may take it before the
    peer that was told it binds it; below that range only listeners compete, and every
    listener a test starts draws from here."""
    top = _ephemeral_range_start()
    while True:
        port = _PORT_DRAWS.randrange(10000, top)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Service:
    """A `pneumotriage` process with its own database, storage and reports folders."""

    def __init__(self, workdir: Path, command: str = "serve", **overrides: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"{command}.log"
        self.storage = workdir / "storage"
        self.reports = workdir / "reports"
        database = overrides.pop("database_url", f"sqlite:///{workdir / 'pneumotriage.db'}")
        self.env = {
            **os.environ,
            "PNEUMOTRIAGE_DICOM_PORT": str(self.port),
            "PNEUMOTRIAGE_WEB_PORT": str(free_port()),
            "PNEUMOTRIAGE_DATABASE_URL": database,
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(self.storage),
            "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(self.reports),
            "PNEUMOTRIAGE_WORKER_INTERVAL_SECONDS": "0.5",
            # One worker per `serve`: tests run many services on 2 cores, each worker
            # loading the model; the shipped two are started in test_scale_out.py.
            "PNEUMOTRIAGE_WORKER_PROCESSES": "1",
            "PNEUMOTRIAGE_DICOM_SHUTDOWN_GRACE_SECONDS": "5",
            **{f"PNEUMOTRIAGE_{k.upper()}": v for k, v in overrides.items()},
        }
        self.database_url = database
        self.command = command
        # Options after the subcommand, e.g. ["--workers", "2"] for serve.
        self.arguments: list[str] = []
        # Arguments put before the Python command line, e.g. to run it in a namespace.
        self.launcher: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pneumotriage {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start(self) -> Service:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *self.launcher,
                    sys.executable,
                    "-m",
                    "pneumotriage",
                    "--config",
                    str(ROOT / "config.toml"),
                    self.command,
                    *self.arguments,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, STARTUP_SECONDS, f"{self.command} to start")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"service exited early:\n{self.log()}")
        return "pneumotriage.service: ready" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def dcmtk(
        self, tool: str, calling_ae: str, *arguments: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """A DCMTK peer, verbose so that every response status is in its output."""
        return subprocess.run(
            [
                tool,
                "-v",
                "-aet",
                calling_ae,
                "-aec",
                "PNEUMOTRIAGE",
                "127.0.0.1",
                str(self.port),
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def echo(self, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
        return self.dcmtk("echoscu", calling_ae, timeout=60)

    def store(
        self, *files: Path, calling_ae: str = "MODALITY", options: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """storescu going on after a failed store (-nh), so every file gets its answer."""
        return self.dcmtk("storescu", calling_ae, "-nh", *options, *map(str, files))

    def send_unparsed(self, path: Path, sop_class_uid: str, transfer_syntax: str) -> Dataset:
        """Send a file's bytes without decoding them, as a broken sender would: DCMTK refuses
        to send a file it cannot parse, pynetdicom streams it as it is."""
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context(sop_class_uid, transfer_syntax)
            association = ae.associate("127.0.0.1", self.port, ae_title="PNEUMOTRIAGE")
            assert association.is_established
            status = association.send_c_store(path)
            association.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        return status

    def sql(self, statement: str, *parameters: object) -> list[tuple]:
        """Read the service's SQLite file directly, to check what the node committed before
        it answered, independently of the code under test."""
        with sqlite3.connect(Path(self.database_url.removeprefix("sqlite:///"))) as connection:
            return connection.execute(statement, parameters).fetchall()

    def history(self, *filters: str) -> list[dict[str, Any]]:
        return json.loads(self.cli("history", "--format", "json", *filters).stdout)

    def wait_for_status(self, sop_uid: str, statuses: set[str]) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            rows = [r for r in self.history() if r["sop_instance_uid"] == sop_uid]
            return rows[0] if rows and rows[0]["status"] in statuses else None

        return wait_until(settled, TRIAGE_SECONDS, f"{sop_uid} to become {statuses}")


@pytest.fixture(scope="session")
def dcmtk() -> None:
    require_tools("storescu", "echoscu")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, dcmtk: None) -> Iterator[Service]:
    """One running service (node, worker, scheduler) shared by the interop tests."""
    running = Service(
        tmp_path_factory.mktemp("service"),
        dicom_allowed_calling_aes="MODALITY,ECHOSCU,STORESCU,PYNETDICOM",
        worker_study_settle_seconds="1",
    ).start()
    yield running
    running.stop()


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dicom"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this run, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"pneumotriage_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A freshly migrated database of each kind; test modules that need only SQLite define
    their own `sessions`."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


class Orthanc:
    """Debian's Orthanc as the PACS that receives results: its own configuration, SQLite
    index and storage in a temporary folder, free DICOM and HTTP ports."""

    def __init__(
        self, workdir: Path, ae_title: str = "ORTHANC", settings: dict[str, Any] | None = None
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.settings = settings or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.config = workdir / "orthanc.json"
        self.log = workdir / "orthanc.log"
        self.started_before = False
        self._choose_ports()

    def _choose_ports(self) -> None:
        self.dicom_port = free_port()
        self.http_port = free_port()
        workdir = self.workdir
        self.config.write_text(
            json.dumps(
                {
                    "Name": "pneumotriage-test-pacs",
                    "StorageDirectory": str(workdir / "storage"),
                    "IndexDirectory": str(workdir / "index"),
                    "DicomAet": self.ae_title,
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "DicomAlwaysAllowStore": True,
                    "Plugins": [],
                }
                | self.settings
            ),
            encoding="utf-8",
        )

    def start(self) -> Orthanc:
        """On its first start, start again on fresh ports when Orthanc exits early: between
        choosing a free port and Orthanc binding it, any process on the machine may take it
        (an outgoing connection's ephemeral port is enough), and Orthanc then stops at once.
        A restart keeps its ports, which the service under test already knows."""
        attempts = 1 if self.started_before else 3
        for attempt in range(1, attempts + 1):
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    ["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT
                )
            if wait_until(self._ready, 60, "Orthanc to start") == "started":
                self.started_before = True
                return self
            if attempt < attempts:
                self._choose_ports()
        tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise AssertionError("Orthanc exited early, last lines of its log:\n" + "\n".join(tail))

    def _ready(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            return "exited"
        try:
            return "started" if self.get("/system") else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def get(self, path: str) -> Any:
        import urllib.request

        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        return (
            json.loads(body) if response.headers.get_content_type() == "application/json" else body
        )


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_tools("Orthanc")
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()

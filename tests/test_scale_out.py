"""Scale-out: 2 node processes sharing one port, 3 workers, 8 senders, on PostgreSQL and on
SQLite; and the processes `serve` starts, watches and stops.

1,000 instances go from 8 concurrent `storescu` senders to two `pneumotriage node`
processes listening on the same port (SO_REUSEPORT) and sharing one storage folder and one
throwaway database (PostgreSQL, or one SQLite file) with three `pneumotriage worker`
processes; no coordinator but the database. Part-way, one node and one worker are killed
with SIGKILL. The senders behave as modalities do: what was not acknowledged is sent
again. In the end every instance is stored once (one row, one file) and triaged once (one
result), none is lost, none is doubled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    POSTGRES_ADMIN_URL,
    ROOT,
    STARTUP_SECONDS,
    Service,
    free_port,
    require_tools,
    wait_until,
)
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from core.config import load_config
from pneumotriage.processes import FAULT_STATUS

pytestmark = pytest.mark.interop

INSTANCES = 1000
SENDERS = 8
# Each sender sends its share in associations of this many instances, as a modality sends
# study by study, so that a killed node cuts some associations and not all.
PER_ASSOCIATION = 25
IMAGES_PER_STUDY = 4


@pytest.fixture
def database() -> Iterator[str]:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"pneumotriage_scale_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _instances(folder: Path) -> list[Path]:
    pixels = [grey_pixels(image) for image in fixture_images()]
    files = []
    for study in range(INSTANCES // IMAGES_PER_STUDY):
        study_uid, series_uid = generate_uid(), generate_uid()
        for image in range(IMAGES_PER_STUDY):
            dataset = make_dataset(
                pixels[(study + image) % len(pixels)],
                patient_name=f"Scale^Patient{study}",
                patient_id=f"SCALE{study:04d}",
                accession_number=f"S{study:04d}",
                study_uid=study_uid,
                series_uid=series_uid,
            )
            files.append(write(dataset, folder))
    return files


def _send(port: int, sender: int, files: list[Path]) -> set[str]:
    """The SOP Instance UIDs (file stems) the node acknowledged with Success."""
    acknowledged: set[str] = set()
    for start in range(0, len(files), PER_ASSOCIATION):
        batch = files[start : start + PER_ASSOCIATION]
        result = subprocess.run(
            [
                "storescu",
                "-v",
                "-nh",
                "-aet",
                f"MODALITY{sender}",
                "-aec",
                "PNEUMOTRIAGE",
                "127.0.0.1",
                str(port),
                *map(str, batch),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        sent = None
        for line in result.stderr.splitlines():
            if match := re.search(r"Sending file: (\S+)", line):
                sent = Path(match.group(1)).stem
            elif "Received Store Response (Success)" in line and sent is not None:
                acknowledged.add(sent)
                sent = None
    return acknowledged


def _count(url: str, statement: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(statement)).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_nodes_three_workers_lose_and_double_nothing_through_kill_9(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """On PostgreSQL as several machines would share it, and on SQLite as the processes of
    one machine do (`serve --nodes`, the shipped two workers): its write lock, not row
    locks, keeps registration and claims apart."""
    require_tools("storescu")
    database = (
        request.getfixturevalue("database")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'shared.db'}"
    )
    port = free_port()
    storage = tmp_path / "storage"
    shared = {
        "database_url": database,
        "dicom_port": str(port),
        "dicom_reuse_port": "true",
        "storage_directory": str(storage),
        "worker_lease_seconds": "15",
        "worker_study_settle_seconds": "1",
    }
    nodes = [Service(tmp_path / f"node{i}", "node", **shared) for i in range(2)]
    workers = [Service(tmp_path / f"worker{i}", "worker", **shared) for i in range(3)]
    for service in nodes + workers:
        service.workdir.mkdir()
    files = _instances(tmp_path / "out")
    # The first process migrates the empty database; the others then find it current.
    nodes[0].start()
    for service in nodes[1:] + workers:
        service.start()
    try:
        acknowledged: set[str] = set()
        lock = threading.Lock()

        def sender(index: int) -> None:
            done = _send(port, index, files[index::SENDERS])
            with lock:
                acknowledged.update(done)

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        # Each in the middle of its work, whichever of receiving and triage is the faster:
        # the node with three quarters still to receive, the worker with three quarters
        # still to triage.
        for killed, statement, what in (
            (nodes[0], "SELECT count(*) FROM instances", "a quarter to be stored"),
            (workers[0], "SELECT count(*) FROM results", "a quarter to be triaged"),
        ):
            wait_until(
                lambda statement=statement: _count(database, statement) >= INSTANCES // 4,
                300,
                what,
            )
            if killed is nodes[0]:
                assert any(thread.is_alive() for thread in threads)
            assert killed.process is not None
            killed.process.send_signal(signal.SIGKILL)
            killed.process.wait()
        for thread in threads:
            thread.join()
        for attempt in range(3):
            missing = [f for f in files if f.stem not in acknowledged]
            if not missing:
                break
            acknowledged |= _send(port, attempt, missing)
        assert len(acknowledged) == INSTANCES

        wait_until(
            lambda: (
                _count(
                    database,
                    "SELECT count(*) FROM instances WHERE status IN ('pending','processing')",
                )
                == 0
            ),
            300,
            "every instance to be settled",
        )
        instances = _count(database, "SELECT count(*) FROM instances")
        distinct = _count(database, "SELECT count(DISTINCT sop_instance_uid) FROM instances")
        triaged = _count(database, "SELECT count(*) FROM instances WHERE status = 'triaged'")
        results = _count(database, "SELECT count(*) FROM results")
        with_result = _count(database, "SELECT count(DISTINCT instance_fk) FROM results")
        assert (instances, distinct, triaged) == (INSTANCES, INSTANCES, INSTANCES)
        assert results == with_result == INSTANCES
        stored = [
            p
            for p in storage.rglob("*.dcm")
            if not p.relative_to(storage).parts[0].startswith((".", "outputs"))
        ]
        assert len(stored) == INSTANCES
        assert {p.stem for p in stored} == {f.stem for f in files}
        studies = _count(database, "SELECT count(*) FROM studies")
        assert studies == INSTANCES // IMAGES_PER_STUDY
        logs = "".join(s.log() for s in nodes[1:] + workers[1:])
        assert "Traceback" not in logs
    finally:
        for service in nodes[1:] + workers[1:]:
            service.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_serve_starts_watches_and_stops_more_processes(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """`serve --nodes 2 --workers 2`: four processes report (the option overrides
    worker.processes), a study sent is triaged, a killed child is started again, and
    stopping serve stops them all; on SQLite too (one host), where the nodes take turns at
    registering through its write lock."""
    require_tools("storescu")
    places = {"worker_study_settle_seconds": "1", "worker_processes": "3"}
    if backend == "postgresql":
        places["database_url"] = request.getfixturevalue("database")
    serve = Service(tmp_path, "serve", **places)
    serve.arguments = ["--nodes", "2", "--workers", "2"]
    serve.start()
    try:

        def processes() -> dict[str, list[dict]]:
            state = json.loads(serve.cli("status", "--format", "json", check=False).stdout)
            alive = [p for p in state["processes"] if p["alive"]]
            return {c: [p for p in alive if p["component"] == c] for c in ("node", "worker")}

        wait_until(
            lambda: all(len(found) == 2 for found in processes().values()),
            STARTUP_SECONDS,
            "two nodes and two workers to report",
        )
        path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "out")
        assert "Received Store Response (Success)" in serve.store(path).stderr
        serve.wait_for_status(path.stem, {"triaged"})
        assert serve.log().count("started a worker process") == 2

        child = int(processes()["worker"][0]["process"].rsplit(":", 1)[1])
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: "starting it again" in serve.log(), STARTUP_SECONDS, "the restart")
    finally:
        assert serve.stop() == 0
    assert "did not stop; killed" not in serve.log()


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie that no one in this container reaps."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_worker_runs_beside_serve_and_stops_when_serve_is_killed(tmp_path: Path) -> None:
    """Plain `serve` triages in worker.processes (as shipped, two) processes of their own,
    not in the node's; SIGKILL to `serve` cannot stop them, so each notices and stops itself
    rather than claim on as an orphan."""
    require_tools("storescu")
    shipped = load_config(ROOT / "config.toml", {}).worker.processes
    serve = Service(tmp_path, "serve", worker_study_settle_seconds="1")
    del serve.env["PNEUMOTRIAGE_WORKER_PROCESSES"]  # the file's value, not the tests' one
    serve.start()
    try:
        path = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "out")
        assert "Received Store Response (Success)" in serve.store(path).stderr
        serve.wait_for_status(path.stem, {"triaged"})

        def reported() -> list[int]:
            state = json.loads(serve.cli("status", "--format", "json", check=False).stdout)
            return [
                int(p["process"].rsplit(":", 1)[1])
                for p in state["processes"]
                if p["alive"] and p["component"] == "worker"
            ]

        workers: list[int] = []

        def all_reported() -> bool:
            workers[:] = reported()
            return len(workers) == shipped

        wait_until(all_reported, STARTUP_SECONDS, "the workers to report")
        assert shipped == 2 and serve.log().count("started a worker process") == shipped
        assert serve.process.pid not in workers
    finally:
        serve.process.kill()
        serve.process.wait()
    try:
        wait_until(
            lambda: all(map(_gone, workers)), 30, "the workers to stop after serve was killed"
        )
    finally:
        for worker in workers:
            if not _gone(worker):
                os.kill(worker, signal.SIGKILL)
    assert f"process {serve.process.pid}, which started this one, is gone" in serve.log()


def test_a_model_that_does_not_load_stops_serve_in_one_line(tmp_path: Path) -> None:
    """The worker that `serve` starts cannot load the model: `serve` does not stay up
    receiving what nothing will triage, nor start the worker again and again; it stops with
    the status a service manager can be told not to restart on, and the log says why in one
    line, without a traceback."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(ROOT / "models" / "cnn-lstm-ensemble" / "card.json", broken)
    (broken / "model.keras").write_bytes(b"not a keras file")
    serve = Service(tmp_path, "serve", model_name=str(broken))
    result = serve.cli("serve", check=False)
    assert result.returncode == FAULT_STATUS, result.stderr
    assert "the model did not load: broken-model: model.keras does not load" in result.stderr
    assert "worker process" in result.stderr and "stopped on the fault above" in result.stderr
    assert "starting it again" not in result.stderr
    assert "Traceback" not in result.stderr

"""Work that a dying worker or a database outage leaves behind: none lost, none wrongly blamed.

Claims run on real SQLite and PostgreSQL databases; `requeue` runs as the real command.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from test_database import TRIAGE, expire_leases, find_all, register

from core.config import load_config
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.schema import AuditEvent, Instance
from core.db.types import utcnow
from core.heartbeat import local_process_alive
from core.lifecycle import claim, complete, reclaim_dead, reject, reject_exhausted
from worker.pipeline import TriageWorker


def test_only_the_culprit_of_a_crashing_batch_is_rejected(
    sessions: sessionmaker[Session],
) -> None:
    """A worker dies whenever it holds the culprit; the bystanders of its batch are retried
    alone and triaged, and the culprit alone ends rejected as "worker stopped"."""
    uids = [register(sessions) for _ in range(4)]
    culprit = uids[1]
    for _ in range(12):
        with sessions() as session:
            reject_exhausted(session, max_attempts=3)
            claims = claim(session, "worker", 10, lease_seconds=300)
            session.commit()
            if not claims:
                break
            if any(c.sop_instance_uid == culprit for c in claims):
                expire_leases(sessions)  # the worker died holding them
                continue
            for work in claims:
                assert complete(session, work, "worker", TRIAGE)
            session.commit()
    rows = {r.sop_instance_uid: r for r in find_all(sessions)}
    assert rows[culprit].status == "rejected" and "worker stopped" in rows[culprit].reason
    assert {rows[uid].status for uid in uids if uid != culprit} == {"triaged"}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_restarted_worker_reclaims_its_hosts_dead_leases_at_once(
    sessions: sessionmaker[Session],
) -> None:
    host = socket.gethostname()
    dead_holder, live_holder = f"{host}:{dead_pid()}:aa", f"{host}:{os.getpid()}:bb"
    register(sessions), register(sessions)
    with sessions() as session:
        assert len(claim(session, dead_holder, 1, lease_seconds=300)) == 1
        assert len(claim(session, live_holder, 1, lease_seconds=300)) == 1
        # Another host's worker may be alive: its lease is left to run out.
        assert reclaim_dead(session, "elsewhere", local_process_alive) == 0
        assert reclaim_dead(session, host, local_process_alive) == 1
        (again,) = claim(session, "restarted", 10, lease_seconds=300)
        session.commit()
    with sessions() as session:
        holders = set(session.scalars(select(Instance.claimed_by)))
    assert holders == {"restarted", live_holder} and again.attempts == 2


def test_a_database_outage_is_logged_once_and_its_end_once(
    tmp_path: Path, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(ROOT / "config.toml", environ={})
    down = make_session_factory(make_engine("postgresql+psycopg://postgres@127.0.0.1:9/x"))
    worker = TriageWorker(config, down, model=None)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG, logger="worker.pipeline")
    attempts = 0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        worker.run_once()
        attempts += 1
        time.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database unavailable" in errors[0].getMessage()
    # Back-off: 1 s, then 2 s; not one try per call.
    tries = 1 + sum("still unavailable" in r.getMessage() for r in caplog.records)
    assert tries <= 3 < attempts

    worker.sessions = sessions
    worker.outage.retry_at = 0.0
    assert worker.run_once() == 0
    ends = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(ends) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_requeue_gives_rejected_instances_fresh_attempts_and_audits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'requeue.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    stopped, not_chest, kept = (register(sessions) for _ in range(3))
    with sessions() as session:
        works = {w.sop_instance_uid: w for w in claim(session, "w", 10, lease_seconds=300)}
        reject(
            session, works[stopped], "w", "processing did not finish in 3 attempts (worker stopped)"
        )
        reject(session, works[not_chest], "w", "not a chest radiograph: modality CT")
        complete(session, works[kept], "w", TRIAGE)
        session.execute(update(Instance).values(attempts=3))
        session.commit()

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pneumotriage", "--config", str(ROOT / "config.toml"), *args],
            env={**os.environ, "PNEUMOTRIAGE_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    refused = command("requeue")
    assert refused.returncode == 2 and "needs a filter" in refused.stderr
    dry = command("requeue", "--reason-contains", "worker stopped", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.split() == [stopped]
    assert {r.sop_instance_uid: r.status for r in find_all(sessions)}[stopped] == "rejected"

    done = command("requeue", "--reason-contains", "worker stopped")
    assert done.returncode == 0 and done.stdout.split() == [stopped], done.stderr
    rows = {r.sop_instance_uid: r for r in find_all(sessions)}
    assert (rows[stopped].status, rows[stopped].reason) == ("pending", "")
    assert rows[not_chest].status == "rejected" and rows[kept].status == "triaged"
    with sessions() as session:
        (event,) = session.scalars(select(AuditEvent)).all()
        attempts = session.scalar(
            select(Instance.attempts).where(Instance.sop_instance_uid == stopped)
        )
    assert (event.action, event.sop_instance_uid) == ("requeued", stopped)
    assert event.actor.startswith("cli:") and "worker stopped" in event.detail
    assert attempts == 0
    assert event.at > utcnow() - timedelta(minutes=5)
    engine.dispose()


def test_publisher_and_forwarder_say_an_outage_once_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from forwarder.job import Forwarder
    from outputs.publish import Publisher

    config = load_config(ROOT / "config.toml", environ={})
    down = make_session_factory(make_engine("postgresql+psycopg://postgres@127.0.0.1:9/x"))
    jobs = [Publisher(config, down), Forwarder(config, down)]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for job in jobs:
            job.run_once()
        time.sleep(0.05)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert {e.split(",")[1].strip().split()[0] for e in errors} == {"publishing", "forwarding"}

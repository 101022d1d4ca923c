"""Heartbeats: each running node and worker process says, every few seconds, that it is alive.

A web process may run on another machine than the node and the worker; the database they
share is the one place where it can see whether they run, so that /healthz tells a stopped
worker from an idle one.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.schema import Heartbeat
from core.db.types import utcnow

# How often a process beats, and after how many missed beats it counts as gone.
INTERVAL_SECONDS = 5.0
MISSED_BEATS = 6


def process_name(component: str) -> str:
    return f"{component}@{socket.gethostname()}:{os.getpid()}"


def local_process_alive(pid: int) -> bool:
    """Whether a process of this host runs under `pid`; the worker's reclaim and the node's
    leftover files ask it of processes that left no heartbeat to go by."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beat(session: Session, component: str, detail: dict[str, Any]) -> None:
    name = process_name(component)
    row = session.scalar(select(Heartbeat).where(Heartbeat.process == name))
    if row is None:
        row = Heartbeat(process=name, component=component, started_at=utcnow())
        session.add(row)
    row.seen_at = utcnow()
    row.detail = json.dumps(detail, sort_keys=True)
    session.commit()


def stop(session: Session, component: str) -> None:
    """A clean stop removes the process's row, so it is not reported as gone."""
    row = session.scalar(select(Heartbeat).where(Heartbeat.process == process_name(component)))
    if row is not None:
        session.delete(row)
        session.commit()


@dataclass(frozen=True)
class Alive:
    process: str
    component: str
    started_at: datetime
    seen_at: datetime
    detail: dict[str, Any]

    @property
    def alive(self) -> bool:
        return utcnow() - self.seen_at <= timedelta(seconds=INTERVAL_SECONDS * MISSED_BEATS)


def processes(session: Session) -> list[Alive]:
    return [
        Alive(row.process, row.component, row.started_at, row.seen_at, json.loads(row.detail))
        for row in session.scalars(
            select(Heartbeat).order_by(Heartbeat.component, Heartbeat.process)
        )
    ]

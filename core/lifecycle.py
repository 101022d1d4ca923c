"""The instance lifecycle: every change of an instance's status, in one place.

    received ──enqueue──▶ pending ──claim──▶ processing ──complete──▶ triaged
                             ▲                 │  │
                             │   retry_later ◀─┘  └──reject──▶ rejected
                             │                                   │
                             └───────────requeue (an admin)──────┘

`enqueue` is the node's, once the file is durably stored; `claim`, `complete`, `reject`
and `retry_later` are the worker's; `requeue` an administrator's, once a cause outside the
image is fixed. A claim is a lease: a worker that dies keeps its work only until the lease
expires (`reject_exhausted` and `claim` take it back), or until a worker restarted on its
host sees that the process is gone (`reclaim_dead`). Work that was in flight when a worker
died is claimed again one instance at a time: only one image of a batch may have crashed
the decoder, and the rest must not share its fate. An instance is rejected as "worker
stopped" only after `max_attempts`, the last of them alone.

Claims are conditional updates, correct on SQLite and PostgreSQL alike (PostgreSQL also
skips rows another worker has locked), so any number of nodes and workers can share one
database with no other coordinator.

Who commits: never these functions. Each changes rows in the caller's session, and the
caller (the node for a C-STORE, the worker for a claimed batch or its results, the command
line for a requeue) commits once per unit of work, so that a transition and what must go
with it (the stored file, the result, the audit event) land together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.orm import Session

from core.audit import record
from core.db.schema import Instance, InstanceStatus, Result, Series, Study
from core.db.types import utcnow
from core.registration import InstanceMetadata, StoredFile, file_under


def enqueue(session: Session, meta: InstanceMetadata, stored: StoredFile) -> Instance:
    """A new instance, filed under its own patient, study and series, pending triage. The
    node calls this after the file is durably stored and acknowledges only after its commit."""
    instance = Instance(
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        series=file_under(session, meta),
        patient_name=meta.patient_name,
        patient_name_key=meta.patient_name_key,
        patient_birth_date=meta.birth_date,
        patient_sex=meta.sex,
        instance_number=meta.instance_number,
        view_position=meta.view_position,
        transfer_syntax_uid=stored.transfer_syntax_uid,
        file_path=stored.relative_path,
        file_size=stored.size,
        calling_ae_title=stored.calling_ae_title[:16],
        received_at=utcnow(),
        status=InstanceStatus.PENDING,
        reason="",
        attempts=0,
    )
    session.add(instance)
    return instance


@dataclass(frozen=True)
class Claim:
    instance_id: int
    sop_instance_uid: str
    file_path: str
    attempts: int


@dataclass(frozen=True)
class Triage:
    probability: float
    label: str
    flagged: bool
    threshold: float
    model_name: str
    model_version: str
    notes: str
    thumbnail_png: bytes
    heatmap_png: bytes | None = None


def _expired(now: datetime):  # noqa: ANN202 - a SQL expression
    return and_(Instance.status == InstanceStatus.PROCESSING, Instance.lease_expires_at < now)


def reject_exhausted(session: Session, max_attempts: int) -> int:
    """Reject instances whose every attempt ended with the worker gone, the last one alone."""
    now = utcnow()
    result = session.execute(
        update(Instance)
        .where(_expired(now), Instance.attempts >= max_attempts, Instance.claimed_alone.is_(True))
        .values(
            status=InstanceStatus.REJECTED,
            reason=f"processing did not finish in {max_attempts} attempts (worker stopped)",
            claimed_by=None,
            lease_expires_at=None,
            processed_at=now,
        )
    )
    return result.rowcount


def claim(session: Session, worker_id: str, limit: int, lease_seconds: float) -> list[Claim]:
    """A batch of pending instances, or a single one whose last worker died with it."""
    now = utcnow()
    claimable = _expired(now)
    candidates = _candidates(session, claimable, 1)
    if not candidates:
        claimable = Instance.status == InstanceStatus.PENDING
        candidates = _candidates(session, claimable, limit)
    if not candidates:
        return []
    session.execute(
        update(Instance)
        .where(Instance.id.in_(candidates), claimable)
        .values(
            status=InstanceStatus.PROCESSING,
            claimed_by=worker_id,
            claimed_alone=len(candidates) == 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Instance.attempts + 1,
        )
    )
    rows = session.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.file_path, Instance.attempts)
        .where(
            Instance.id.in_(candidates),
            Instance.claimed_by == worker_id,
            Instance.status == InstanceStatus.PROCESSING,
        )
        .order_by(Instance.received_at, Instance.id)
    ).all()
    return [Claim(*row) for row in rows]


def _candidates(session: Session, claimable: ColumnElement[bool], limit: int) -> list[int]:
    return list(
        session.scalars(
            select(Instance.id)
            .where(claimable)
            .order_by(Instance.received_at, Instance.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
    )


def reclaim_dead(session: Session, host: str, alive: Callable[[int], bool]) -> int:
    """End at once the leases of workers on this host whose process is gone, rather than
    letting their work wait out `lease_seconds` after a crash and restart. A worker ID is
    `host:pid:token`; a PID that is alive again (reused) just means waiting for the lease."""
    holders = session.scalars(
        select(Instance.claimed_by)
        .distinct()
        .where(Instance.status == InstanceStatus.PROCESSING, Instance.claimed_by.like(f"{host}:%"))
    ).all()
    dead = [h for h in holders if h and not alive(int(h.split(":")[-2]))]
    if not dead:
        return 0
    result = session.execute(
        update(Instance)
        .where(Instance.status == InstanceStatus.PROCESSING, Instance.claimed_by.in_(dead))
        .values(lease_expires_at=utcnow() - timedelta(seconds=1))
    )
    return result.rowcount


def _owned(claim: Claim, worker_id: str):  # noqa: ANN202 - a SQL expression
    return and_(
        Instance.id == claim.instance_id,
        Instance.claimed_by == worker_id,
        Instance.status == InstanceStatus.PROCESSING,
    )


def _settle(session: Session, claim: Claim, worker_id: str, **values: object) -> bool:
    """Update a claimed instance if this worker still holds it; False if the lease was lost."""
    result = session.execute(
        update(Instance)
        .where(_owned(claim, worker_id))
        .values(claimed_by=None, lease_expires_at=None, **values)
    )
    return result.rowcount == 1


def complete(session: Session, claim: Claim, worker_id: str, triage: Triage) -> bool:
    now = utcnow()
    if not _settle(
        session, claim, worker_id, status=InstanceStatus.TRIAGED, reason="", processed_at=now
    ):
        return False
    session.add(
        Result(
            instance_fk=claim.instance_id,
            probability=triage.probability,
            label=triage.label,
            flagged=triage.flagged,
            threshold=triage.threshold,
            model_name=triage.model_name,
            model_version=triage.model_version,
            notes=triage.notes,
            thumbnail_png=triage.thumbnail_png,
            heatmap_png=triage.heatmap_png,
            created_at=now,
        )
    )
    return True


def reject(session: Session, claim: Claim, worker_id: str, reason: str) -> bool:
    return _settle(
        session,
        claim,
        worker_id,
        status=InstanceStatus.REJECTED,
        reason=reason,
        processed_at=utcnow(),
    )


def retry_later(
    session: Session, claim: Claim, worker_id: str, reason: str, max_attempts: int
) -> bool:
    """An unexpected failure: try again on a later run, or give up with the last error."""
    if claim.attempts >= max_attempts:
        return reject(
            session, claim, worker_id, f"processing failed {claim.attempts} times: {reason}"
        )
    return _settle(session, claim, worker_id, status=InstanceStatus.PENDING, reason=reason)


@dataclass(frozen=True)
class RequeueQuery:
    sop_instance_uids: tuple[str, ...] = ()
    study_instance_uid: str | None = None
    reason_contains: str | None = None
    received_from: datetime | None = None
    received_until: datetime | None = None

    @property
    def is_empty(self) -> bool:
        return not (
            self.sop_instance_uids
            or self.study_instance_uid
            or self.reason_contains
            or self.received_from
            or self.received_until
        )


def requeue(session: Session, query: RequeueQuery, actor: str, dry_run: bool = False) -> list[str]:
    """The SOP Instance UIDs of the rejected instances that match, requeued unless `dry_run`.

    Rejections caused by something outside the image (a worker that kept dying, a model
    that could not be loaded, a file system that was full) stop being true once the cause
    is fixed; a requeued instance gets a fresh set of attempts and an audit event."""
    statement = (
        select(Instance.id, Instance.sop_instance_uid, Instance.reason)
        .join(Series, Instance.series_fk == Series.id)
        .join(Study, Series.study_fk == Study.id)
        .where(Instance.status == InstanceStatus.REJECTED, Instance.purged_at.is_(None))
        .order_by(Instance.received_at, Instance.id)
    )
    if query.sop_instance_uids:
        statement = statement.where(Instance.sop_instance_uid.in_(query.sop_instance_uids))
    if query.study_instance_uid:
        statement = statement.where(Study.study_instance_uid == query.study_instance_uid)
    if query.reason_contains:
        statement = statement.where(
            Instance.reason.contains(query.reason_contains, autoescape=True)
        )
    if query.received_from:
        statement = statement.where(Instance.received_at >= query.received_from)
    if query.received_until:
        statement = statement.where(Instance.received_at < query.received_until)
    matches = session.execute(statement).all()
    if dry_run or not matches:
        return [row.sop_instance_uid for row in matches]
    session.execute(
        update(Instance)
        .where(Instance.id.in_([row.id for row in matches]))
        .values(
            status=InstanceStatus.PENDING,
            reason="",
            attempts=0,
            claimed_alone=False,
            processed_at=None,
        )
    )
    for row in matches:
        record(session, "requeued", actor, row.sop_instance_uid, previous_reason=row.reason)
    return [row.sop_instance_uid for row in matches]

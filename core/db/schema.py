"""The result history: patients, studies, series, instances and the model's results.

The DICOM hierarchy is kept so that reports can speak in studies (what radiologists read)
while the worker handles instances (what the model sees). An instance row exists from the
moment its file is durably stored; its status then moves pending -> processing -> triaged
or rejected.

Identity is keyed the way Orthanc keys it: a patient is a Patient ID with its issuer, a study
is a Study Instance UID *under that patient*, a series a Series Instance UID under that study.
So an instance can never be filed under another patient because a sender reused a UID, and
the demographics shown with a result are the ones its own instance carried, never those of a
later instance with the same Patient ID.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import date, datetime, time

from sqlalchemy import (
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import Date, Time

from core.db.types import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# Indexes that exist on PostgreSQL only, by name.
POSTGRESQL_ONLY: set[str] = set()


def schema_objects(dialect: str) -> Callable[..., bool]:
    """Alembic's `include_object` hook for a database of this dialect: it leaves out what
    that database never has, so that comparing the schema with the code's finds no drift."""

    def include(item: object, name: str | None, kind: str, *_: object) -> bool:
        return not (kind == "index" and name in POSTGRESQL_ONLY and dialect != "postgresql")

    return include


def _trigram_index(name: str, column: str) -> Index:
    """For the worklist's search by part of a name or key (ILIKE '%...%'), which no B-tree
    can serve: on PostgreSQL a pg_trgm GIN index finds the few matching rows instead of
    scanning every instance. SQLite has no such index and scans either way, fast enough in
    one process, so there the index is not created at all."""
    index = Index(name, column, postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"})
    index.ddl_if(dialect="postgresql")
    POSTGRESQL_ONLY.add(name)
    return index


def _text_enum(members: type[enum.StrEnum]) -> Enum:
    """Stored as its plain value in a short text column: no PostgreSQL enum type, so a new
    state needs no ALTER TYPE and SQLite and PostgreSQL hold the same text."""
    return Enum(
        members,
        native_enum=False,
        length=16,
        values_callable=lambda values: [v.value for v in values],
    )


class InstanceStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    TRIAGED = "triaged"
    REJECTED = "rejected"


class Patient(Base):
    """A patient key only: names and birth dates live on each instance, as received."""

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id"),
        _trigram_index("ix_patients_patient_id_trgm", "patient_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("patient_fk", "study_instance_uid"),
        _trigram_index("ix_studies_accession_number_trgm", "accession_number"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[date | None] = mapped_column(Date, index=True)
    study_time: Mapped[time | None] = mapped_column(Time)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_description: Mapped[str] = mapped_column(String(64), default="")
    # When its first image arrived: the worklist ranks by waiting time over this indexed
    # column instead of aggregating every instance of every study on each page view.
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("study_fk", "series_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part_examined: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_status_lease", "status", "lease_expires_at"),
        Index("ix_instances_received_at", "received_at"),
        _trigram_index("ix_instances_patient_name_trgm", "patient_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    # core.identity.name_key(patient_name), what identity checks compare; written with the
    # name, without a default, so that a writer that forgets it fails rather than store a
    # key that contradicts nothing. Text: upper case can lengthen a name ("ß" is "SS").
    patient_name_key: Mapped[str] = mapped_column(Text)
    patient_birth_date: Mapped[date | None] = mapped_column(Date)
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer)
    view_position: Mapped[str] = mapped_column(String(16), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(String(512))
    file_size: Mapped[int] = mapped_column(Integer)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[InstanceStatus] = mapped_column(
        _text_enum(InstanceStatus), default=InstanceStatus.PENDING
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # Claimed on its own, so that if the worker dies this instance alone is to blame.
    claimed_alone: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When retention (`storage.keep_days`) removed the received file; its result stays.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    series: Mapped[Series] = relationship(back_populates="instances")
    result: Mapped[Result | None] = relationship(back_populates="instance")


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    probability: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    threshold: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    thumbnail_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    heatmap_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="result")


class StudyResult(Base):
    """What a radiologist reads: one result per study, combined from its images' results.

    A study is settled once no image has arrived for `worker.study_settle_seconds`; an image
    that arrives later and changes the result makes a new version, and the earlier one is
    kept with `superseded_at` set, never overwritten. `published_at` is set once the DICOM
    outputs of this version have been built and queued.
    """

    __tablename__ = "study_results"
    __table_args__ = (UniqueConstraint("study_fk", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(32))
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    threshold: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    images: Mapped[int] = mapped_column(Integer)
    # The instance whose score decided the study's (under `max`, the highest).
    deciding_instance_fk: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Last time the study's image results were combined again and gave this same result.
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study] = relationship()


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OutboxItem(Base):
    """One DICOM object for one destination: durable, so nothing is lost across restarts or
    while a peer is down, and sent again under the same SOP Instance UID, so a PACS that got
    it before the answer was lost keeps one copy."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("destination", "sop_instance_uid"),
        Index("ix_outbox_status_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_result_fk: Mapped[int] = mapped_column(ForeignKey("study_results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(String(512))
    status: Mapped[OutboxStatus] = mapped_column(
        _text_enum(OutboxStatus), default=OutboxStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study_result: Mapped[StudyResult] = relationship()


class AuditEvent(Base):
    """Who did what and when: identity corrections, requeues, sign-ins, every view of a
    study in the web application, feedback, accounts and tokens.

    `detail` is JSON with the values before and after; it may hold patient data, which is
    why it lives in the database beside the rest of it and never in a log.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")


class Role(enum.StrEnum):
    """Radiologists read patient data and record feedback; admins also see the service's
    state, the audit trail and the accounts."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class User(Base):
    """A local account of the web application; the password only as an argon2 hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(_text_enum(Role))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token and the table only its SHA-256,
    so a copy of the database signs nobody in; a disabled account or a sign-out ends it at
    once, which a self-contained signed cookie could not."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The worklist's filters as JSON: kept here rather than in the URL, because the free
    # text may be a patient's name, and names never go into URLs (or the logs that hold them).
    worklist_filter: Mapped[str] = mapped_column(Text, default="{}")

    user: Mapped[User] = relationship()


class ApiToken(Base):
    """A bearer token for scripts and the RIS, stored as its SHA-256 like a session."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginAttempt(Base):
    """Failed sign-ins, counted per user name and per address to slow down guessing; in the
    database so that every web process counts the same attempts."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_username_at", "username", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    username: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), index=True)


class Finding(enum.StrEnum):
    PRESENT = "present"
    ABSENT = "absent"


class Feedback(Base):
    """A radiologist's reading of a study: pneumonia present or absent, and whether that
    agrees with the result shown. Kept with the result version it judged, so a later local
    validation knows what the model had said."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_result_fk: Mapped[int | None] = mapped_column(ForeignKey("study_results.id"))
    user_fk: Mapped[int] = mapped_column(ForeignKey("users.id"))
    finding: Mapped[Finding] = mapped_column(_text_enum(Finding))
    agrees: Mapped[bool | None] = mapped_column(Boolean)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    user: Mapped[User] = relationship()
    study_result: Mapped[StudyResult | None] = relationship()


class Heartbeat(Base):
    """A running node or worker process says it is alive, so that the status page and
    /healthz of a web process elsewhere can tell a stopped worker from an idle one."""

    __tablename__ = "heartbeats"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "worker@host:pid", "node@host:pid"
    process: Mapped[str] = mapped_column(String(128), unique=True)
    component: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the process serves, e.g. the node's port and AE title, as JSON.
    detail: Mapped[str] = mapped_column(Text, default="{}")


class ScheduledRun(Base):
    """One run of a daily job (the nightly report, retention) by whichever process got there
    first: every worker process schedules them, and this row, unique per job and day, is
    how they agree without a coordinator."""

    __tablename__ = "scheduled_runs"
    __table_args__ = (UniqueConstraint("job", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(String(32))
    process: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SiteThreshold(Base):
    """A department's own operating threshold for a model, set after checking the model on
    its own patients; the model card's stays the default. Rows are never changed: the
    newest for a model is in force (a row without a value returns to the card's), and the
    older ones are its history."""

    __tablename__ = "site_thresholds"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    # A threshold tuned for one version may be wrong for the next: it holds for this one.
    model_version: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DriftCheck(Base):
    """One run of the weekly drift check (core.drift): what it measured and whether it
    warned, kept so that `status`, the web's status page and a later reader see the trend."""

    __tablename__ = "drift_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    results: Mapped[int] = mapped_column(Integer)
    pneumonia_share: Mapped[float | None] = mapped_column(Float)
    psi: Mapped[float | None] = mapped_column(Float)
    ks: Mapped[float | None] = mapped_column(Float)
    warned: Mapped[bool] = mapped_column(Boolean)
    summary: Mapped[str] = mapped_column(Text, default="")

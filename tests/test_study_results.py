"""Study-level results: settling, the combination rule, versions, and `history --level study`.

On real SQLite and PostgreSQL databases, through the same claim/complete calls the worker
makes; the running service is covered in test_pacs_outputs.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from test_database import find_all, register

from core.db.schema import StudyResult
from core.db.types import utcnow
from core.history import HistoryQuery, find_studies
from core.lifecycle import Triage, claim, complete, reject
from worker.settle import settle_studies

STUDY = {"study_uid": "1.2.826.0.1.3680043.99.1", "series_uid": "1.2.826.0.1.3680043.99.1.1"}


def triage(sessions: sessionmaker[Session], probabilities: dict[str, float]) -> None:
    with sessions() as session:
        for work in claim(session, "w", 100, lease_seconds=300):
            if work.sop_instance_uid not in probabilities:
                continue  # left claimed: still being processed
            p = probabilities[work.sop_instance_uid]
            label = "PNEUMONIA" if p >= 0.7 else "NORMAL"
            complete(session, work, "w", Triage(p, label, p >= 0.7, 0.7, "m", "v1", "", b""))
        session.commit()


def settle(sessions: sessionmaker[Session], seconds: float = 0, rule: str = "max") -> list:
    with sessions() as session:
        return [
            (v.version, v.probability, v.flagged) for v in settle_studies(session, seconds, rule)
        ]


def versions(sessions: sessionmaker[Session]) -> list[tuple]:
    with sessions() as session:
        return [
            (v.version, v.probability, v.superseded_at is None)
            for v in session.scalars(select(StudyResult).order_by(StudyResult.version))
        ]


def test_a_study_settles_on_its_highest_score_and_versions_late_images(
    sessions: sessionmaker[Session],
) -> None:
    first, second = register(sessions, **STUDY), register(sessions, **STUDY)
    triage(sessions, {first: 0.2, second: 0.5})
    # Not yet: the last image arrived within the settling time.
    assert settle(sessions, seconds=3600) == []
    assert settle(sessions) == [(1, 0.5, False)]
    assert settle(sessions) == []  # nothing new: no second version

    late = register(sessions, **STUDY)
    # An image waiting for triage holds the study back.
    assert settle(sessions) == []
    triage(sessions, {late: 0.9})
    assert settle(sessions) == [(2, 0.9, True)]
    assert versions(sessions) == [(1, 0.5, False), (2, 0.9, True)]

    # A late image that changes nothing but the count is a new version too: the study
    # result names how many images it covers.
    quiet = register(sessions, **STUDY)
    triage(sessions, {quiet: 0.1})
    assert settle(sessions) == [(3, 0.9, True)]

    with sessions() as session:
        (row,) = find_studies(session, HistoryQuery())
    assert (row.status, row.images, row.triaged, row.result_version) == ("triaged", 4, 4, 3)
    assert row.flagged and row.probability == pytest.approx(0.9)


def test_mean_rule_and_rejected_images(sessions: sessionmaker[Session]) -> None:
    a, b, lateral = (register(sessions, **STUDY) for _ in range(3))
    with sessions() as session:
        for work in claim(session, "w", 10, lease_seconds=300):
            if work.sop_instance_uid == lateral:
                reject(session, work, "w", "lateral view")
            else:
                p = {a: 0.6, b: 0.9}[work.sop_instance_uid]
                complete(session, work, "w", Triage(p, "X", p >= 0.7, 0.7, "m", "v1", "", b""))
        session.commit()
    assert settle(sessions, rule="mean") == [(1, pytest.approx(0.75), True)]
    with sessions() as session:
        (row,) = find_studies(session, HistoryQuery(flagged_only=True))
    assert (row.images, row.triaged, row.rejected) == (3, 2, 1)


def test_study_level_history_status_and_filters(sessions: sessionmaker[Session]) -> None:
    done = register(sessions, patient_id="DONE", **STUDY)
    register(sessions, patient_id="WAITING")
    triage(sessions, {done: 0.3})
    settle(sessions)
    with sessions() as session:
        rows = {r.patient_id: r for r in find_studies(session, HistoryQuery())}
        assert rows["DONE"].status == "triaged" and not rows["DONE"].flagged
        assert rows["WAITING"].status == "pending" and rows["WAITING"].result_version is None
        pending = find_studies(session, HistoryQuery(status="pending"))
        assert [r.patient_id for r in pending] == ["WAITING"]
        recent = find_studies(session, HistoryQuery(received_from=utcnow() + timedelta(hours=1)))
        assert recent == []
    assert len(find_all(sessions)) == 2

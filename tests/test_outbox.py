"""The outbox as a queue on real SQLite and PostgreSQL: due rows, back-off, failure, retry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker
from test_database import register
from test_study_results import STUDY, settle, triage

from core.db.schema import OutboxItem, StudyResult
from core.db.types import utcnow
from forwarder.outbox import Due, claim_due, gives_up, mark_failed_attempt, mark_sent, retry

LEASE = 600


def queued(sessions: sessionmaker[Session], count: int) -> None:
    uid = register(sessions, **STUDY)
    triage(sessions, {uid: 0.9})
    settle(sessions)
    with sessions() as session:
        version = session.scalar(select(StudyResult.id))
        session.add_all(
            OutboxItem(
                study_result_fk=version,
                destination="PACS@127.0.0.1:104",
                kind="sr",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                sop_instance_uid=f"1.2.3.{n}",
                file_path=f"outputs/x/{n}.dcm",
                next_attempt_at=utcnow(),
                last_error="",
            )
            for n in range(count)
        )
        session.commit()


def test_failed_sends_back_off_then_fail_and_can_be_retried(
    sessions: sessionmaker[Session],
) -> None:
    queued(sessions, 2)
    with sessions() as session:
        stored, refused = claim_due(session, 10, LEASE)
        # A second forwarder finds nothing while these are held.
        assert claim_due(session, 10, LEASE) == []
        assert mark_sent(session, stored, 0)
        session.commit()
    delays = []
    for attempt in (1, 2, 3):
        with sessions() as session:
            if attempt > 1:
                (refused,) = claim_due(session, 10, LEASE)
            assert refused.attempts == attempt
            assert mark_failed_attempt(session, refused, 0xA700, "status 0xA700", 3, 10, 25)
            session.commit()
            item = session.get(OutboxItem, refused.id)
            delays.append((item.next_attempt_at - utcnow()).total_seconds())
            assert item.status == ("failed" if attempt == 3 else "pending")
            assert gives_up(refused, 3) is (attempt == 3)
            # Not due before its back-off has passed.
            assert claim_due(session, 10, LEASE) == []
            session.execute(update(OutboxItem).values(next_attempt_at=utcnow()))
            session.commit()
    assert delays == [pytest.approx(10, abs=2), pytest.approx(20, abs=2), pytest.approx(25, abs=2)]
    with sessions() as session:
        statuses = sorted(session.scalars(select(OutboxItem.status)))
        assert statuses == ["failed", "sent"]
        assert claim_due(session, 10, LEASE) == []
        assert retry(session, [refused.id]) == 1
        (again,) = claim_due(session, 10, LEASE)
        assert (again.id, again.attempts) == (refused.id, 1)


def claimed_after_its_lease_ran_out(session: Session) -> tuple[Due, Due]:
    """The one queued row claimed, its lease run out (its forwarder died, or hangs), and the
    row claimed again."""
    (first,) = claim_due(session, 10, LEASE)
    session.execute(update(OutboxItem).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    (again,) = claim_due(session, 10, LEASE)
    return first, again


def test_a_send_held_by_a_dead_forwarder_is_claimed_again(
    sessions: sessionmaker[Session],
) -> None:
    queued(sessions, 1)
    with sessions() as session:
        first, again = claimed_after_its_lease_ran_out(session)
    assert (again.id, again.attempts) == (first.id, 2)


def test_two_forwarders_never_get_the_same_row(sessions: sessionmaker[Session]) -> None:
    """The second forwarder claims between the first's read of due ids and its update (on
    SQLite that read holds no lock): each row goes to one of them. Claimed by the ids read
    before the update, both got every row on SQLite, and both sent them. (On PostgreSQL the
    read locks the rows, and the second finds none, before the change as after it.)"""
    queued(sessions, 3)
    engine = sessions.kw["bind"]
    second: list[Due] | None = None

    def interleave(connection: object, cursor: object, statement: str, *_: object) -> None:
        nonlocal second
        if second is None and statement.lstrip().upper().startswith("UPDATE OUTBOX"):
            second = []  # the second claim's own UPDATE goes straight through
            with sessions() as other:
                second = claim_due(other, 10, LEASE)

    event.listen(engine, "before_cursor_execute", interleave)
    try:
        with sessions() as session:
            first = claim_due(session, 10, LEASE)
    finally:
        event.remove(engine, "before_cursor_execute", interleave)
    assert second is not None
    claimed = [item.id for item in first + second]
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 3


def test_a_forwarder_whose_lease_ran_out_cannot_undo_the_next_claims_outcome(
    sessions: sessionmaker[Session],
) -> None:
    """A send that outlasted its lease ends after a second forwarder claimed the row again
    and stored it: the first one's failure must not put the row back in the queue."""
    queued(sessions, 1)
    with sessions() as session:
        stale, current = claimed_after_its_lease_ran_out(session)
        assert mark_sent(session, current, 0)
        session.commit()
        assert not mark_failed_attempt(session, stale, None, "timed out", 3, 10, 25)
        assert not mark_sent(session, stale, 0)
        session.commit()
        assert session.scalar(select(OutboxItem.status)) == "sent"


def test_a_retried_row_is_not_the_stale_claim_it_was(sessions: sessionmaker[Session]) -> None:
    """`outbox --retry` starts a failed row's attempts again, so the new claim has the
    attempt number of one long gone; that one's late outcome is still not the new claim's."""
    queued(sessions, 1)
    with sessions() as session:
        stale, later = claimed_after_its_lease_ran_out(session)
        assert mark_failed_attempt(session, later, 0xA700, "status 0xA700", 2, 10, 25)
        session.commit()
        assert retry(session, None) == 1
        (current,) = claim_due(session, 10, LEASE)
        assert current.attempts == stale.attempts == 1
        assert not mark_sent(session, stale, 0)
        session.commit()
        assert session.scalar(select(OutboxItem.status)) == "sending"

"""The forwarder: every `forward.interval_seconds`, send what the outbox holds that is due."""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Config
from core.db.outage import DatabaseOutage
from core.tls import client_context
from forwarder.outbox import Due, claim_due, gives_up, mark_failed_attempt, mark_sent
from forwarder.scu import send

log = logging.getLogger(__name__)

BATCH = 50
# A send that outlasted its lease: the row was claimed again, and that claim's outcome counts.
_SUPERSEDED = (
    "%s to %s: outcome (%s) not recorded: this forwarder's claim (attempt %d) ran out"
    " and the row was claimed again"
)


class Forwarder:
    def __init__(self, config: Config, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.sessions = sessions
        self.destinations = {d.name: d for d in config.forward.destinations}
        # Loaded once, like the node's: a renewed certificate takes a restart.
        self.tls = {d.name: client_context(d) for d in config.forward.destinations if d.tls}
        self.outage = DatabaseOutage(log, "forwarding", config.worker.outage_backoff_max_seconds)

    def run_once(self) -> int:
        """Send one batch; return how many objects were stored by their destination."""
        if self.outage.should_skip():
            return 0
        try:
            with self.sessions() as session:
                due = claim_due(session, BATCH, self._lease_seconds())
        except SQLAlchemyError as exc:
            self.outage.failed(exc)
            return 0
        self.outage.succeeded()
        by_destination: dict[str, list[Due]] = defaultdict(list)
        for item in due:
            by_destination[item.destination].append(item)
        return sum(self._send(name, items) for name, items in by_destination.items())

    def _lease_seconds(self) -> float:
        """Twice the longest a batch can take: every destination's connection and
        association and every C-STORE answered at the last moment of its timeout. Shorter,
        a slow PACS let another forwarder claim and send the end of a batch being sent."""
        forward = self.config.forward
        steps = BATCH + 2 * len(forward.destinations)
        return 2 * steps * forward.timeout_seconds

    def _send(self, name: str, items: list[Due]) -> int:
        forward = self.config.forward
        destination = self.destinations.get(name)
        storage = self.config.storage.directory
        if destination is None:
            answers = {}
            reason = f"destination {name} is no longer in forward.destinations"
        else:
            files = {i.id: (i.sop_class_uid, storage / i.file_path) for i in items}
            answers = send(
                self.config.dicom.ae_title,
                destination,
                files,
                forward.timeout_seconds,
                self.tls.get(name),
            )
            reason = ""
        stored = 0
        with self.sessions() as session:
            for item in items:
                answer = answers.get(item.id)
                if answer is not None and answer.stored:
                    if mark_sent(session, item, answer.status or 0):
                        stored += 1
                        log.info("sent %s to %s", item.sop_instance_uid, name)
                    else:
                        log.warning(
                            _SUPERSEDED, item.sop_instance_uid, name, "stored", item.attempts
                        )
                    continue
                status = answer.status if answer else None
                error = answer.comment if answer else reason
                if status is not None:
                    error = f"status 0x{status:04X}" + (f": {error}" if error else "")
                recorded = mark_failed_attempt(
                    session,
                    item,
                    status,
                    error,
                    forward.max_attempts,
                    forward.retry_seconds,
                    forward.retry_max_seconds,
                )
                if not recorded:
                    log.warning(_SUPERSEDED, item.sop_instance_uid, name, error, item.attempts)
                    continue
                log.warning(
                    "%s %s to %s (attempt %d): %s",
                    "gave up sending"
                    if gives_up(item, forward.max_attempts)
                    else "will retry sending",
                    item.sop_instance_uid,
                    name,
                    item.attempts,
                    error,
                )
            session.commit()
        return stored

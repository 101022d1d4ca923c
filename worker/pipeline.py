"""The triage worker: claim, load, select and convert, infer, write; one small step each.

Like a MONAI Deploy application it is a chain of operators, but plain functions suffice:
each instance either flows to inference or leaves the chain with a reason. Known problems
(not a chest radiograph, undecodable pixels) reject the instance at once; unexpected errors
are retried on a later run and rejected only after `max_attempts`, so neither a bad file nor
a passing fault can put the worker in a crash loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.config import Config
from core.db.outage import DatabaseOutage
from core.heartbeat import local_process_alive
from core.heatmap import HeatmapModel, heatmap_model
from core.heatmap_render import map_png
from core.intake import read_model_input
from core.lifecycle import (
    Claim,
    Triage,
    claim,
    complete,
    reclaim_dead,
    reject,
    reject_exhausted,
    retry_later,
)
from core.model_store import LoadedModel
from core.pixels import ConversionError
from core.site_threshold import OperatingThreshold, in_force
from worker.settle import settle_studies
from worker.thumbnail import png_thumbnail

log = logging.getLogger(__name__)


@dataclass
class Item:
    claim: Claim
    pixels: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    rejection: str = ""
    failure: str = ""
    triage: Triage | None = None


class TriageWorker:
    def __init__(self, config: Config, sessions: sessionmaker[Session], model: LoadedModel) -> None:
        self.config = config
        self.sessions = sessions
        self.model = model
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.outage = DatabaseOutage(log, "triage", config.worker.outage_backoff_max_seconds)
        self._stopping = threading.Event()
        # The operating threshold in force, read with each claimed batch.
        self.threshold: OperatingThreshold | None = None

    @cached_property
    def heatmaps(self) -> HeatmapModel | None:
        """One pass gives the probabilities and the heatmaps (about 1.2 times the cost of
        the probabilities alone, benchmarks/heatmap_cost.py); a model without a
        convolutional feature map has none. Built at the first batch, not at start."""
        return heatmap_model(self.model)

    def recover_dead_leases(self) -> None:
        """At start: work a crashed worker of this host left behind is claimable at once."""
        try:
            with self.sessions() as session:
                expired = reclaim_dead(session, self.host, local_process_alive)
                session.commit()
        except SQLAlchemyError as exc:
            self.outage.failed(exc)
            return
        if expired:
            log.warning("reclaiming %d instance(s) left by a stopped worker on this host", expired)

    def run_once(self) -> int:
        """Work batch after batch until nothing is pending; return how many instances were
        settled. The scheduler's interval is then only how long an idle worker waits: one
        batch per tick capped a 5 s tick at 3.2 instances/s (benchmarks/stage_times.py).
        Never raises for a bad instance or a database outage: the scheduler simply runs it
        again later. Work a dead worker left comes one instance per claim; studies are
        settled after each batch, so a long queue does not hold their results back."""
        if self.outage.should_skip():
            return 0
        settled = 0
        while not self._stopping.is_set():
            claims = self._claim()
            if not claims:
                break
            items = [self._prepare(c) for c in claims]
            self._infer([i for i in items if i.pixels is not None])
            settled += self._write(items)
            if self.outage.since is not None:
                break
            self._settle_studies()
            if any(item.failure for item in items):
                # What failed is pending again; it is tried at the next tick, not at once,
                # so that a passing fault does not use up its attempts in seconds.
                break
        if self.outage.since is None and not settled:
            self._settle_studies()
        return settled

    def stop(self) -> None:
        """Finish the batch in hand and stop taking more, so that a stop does not wait for
        the whole queue."""
        self._stopping.set()

    def _settle_studies(self) -> None:
        try:
            with self.sessions() as session:
                settle_studies(
                    session, self.config.worker.study_settle_seconds, self.config.worker.study_rule
                )
        except SQLAlchemyError as exc:
            self.outage.failed(exc)

    def _claim(self) -> list[Claim]:
        try:
            with self.sessions() as session:
                exhausted = reject_exhausted(session, self.config.worker.max_attempts)
                if exhausted:
                    log.warning("rejected %d instance(s) whose attempts all stopped", exhausted)
                claims = claim(
                    session,
                    self.worker_id,
                    self.config.worker.batch_size,
                    self.config.worker.lease_seconds,
                )
                # Read with every batch, so that a threshold set for the site applies to
                # the next batch of every worker, without a restart.
                if claims:
                    self.threshold = in_force(session, self.model.card)
                session.commit()
        except SQLAlchemyError as exc:
            self.outage.failed(exc)
            return []
        self.outage.succeeded()
        return claims

    def _prepare(self, work: Claim) -> Item:
        item = Item(work)
        path = self.config.storage.directory / work.file_path
        try:
            if not path.is_file():
                item.rejection = "stored file is missing"
                return item
            converted = read_model_input(path, self.config.selection, self.model.card.input_size)
            refusal = self.model.refusal(converted.pixels)
            if refusal:
                item.rejection = refusal
                return item
            item.pixels, item.notes = converted.pixels, converted.notes
        except ConversionError as exc:
            item.rejection = str(exc)
        except MemoryError:
            item.failure = "not enough memory to convert the image"
        except Exception as exc:
            log.exception("unexpected error converting %s", work.sop_instance_uid)
            item.failure = f"unexpected error: {type(exc).__name__}: {exc}"
        return item

    def _infer(self, ready: list[Item]) -> None:
        if not ready:
            return
        pixels = np.stack([i.pixels for i in ready])
        try:
            if self.heatmaps is None:
                probabilities, maps = self.model.predict(pixels), [None] * len(ready)
            else:
                explained = self.heatmaps.explain(pixels)
                probabilities, maps = explained.probabilities, list(explained.maps)
        except Exception as exc:
            log.exception("inference failed for %d instance(s)", len(ready))
            for item in ready:
                item.failure = f"inference failed: {type(exc).__name__}: {exc}"
            return
        card = self.model.card
        threshold = card.threshold if self.threshold is None else self.threshold.value
        for item, probability, heatmap in zip(ready, probabilities, maps, strict=True):
            label = card.label_for(float(probability), threshold)
            item.triage = Triage(
                probability=float(probability),
                label=label,
                flagged=label == card.positive_class,
                threshold=threshold,
                model_name=card.name,
                model_version=card.version,
                notes="; ".join(item.notes),
                thumbnail_png=png_thumbnail(item.pixels, self.config.worker.thumbnail_pixels),
                heatmap_png=None if heatmap is None else map_png(heatmap),
            )

    def _write(self, items: list[Item]) -> int:
        settled = 0
        max_attempts = self.config.worker.max_attempts
        try:
            with self.sessions() as session:
                for item in items:
                    work = item.claim
                    if item.failure:
                        done = retry_later(
                            session, work, self.worker_id, item.failure, max_attempts
                        )
                    elif item.rejection:
                        done = reject(session, work, self.worker_id, item.rejection)
                    elif item.triage is not None:
                        done = complete(session, work, self.worker_id, item.triage)
                    else:
                        continue
                    settled += done
                    self._log(item, done)
                session.commit()
        except SQLAlchemyError as exc:
            # The leases expire and the work is claimed again, one instance at a time.
            self.outage.failed(exc)
            return 0
        return settled

    @staticmethod
    def _log(item: Item, done: bool) -> None:
        uid = item.claim.sop_instance_uid
        if not done:
            log.warning("%s: lease lost to another worker, result discarded", uid)
        elif item.failure:
            log.warning("%s: attempt %d failed: %s", uid, item.claim.attempts, item.failure)
        elif item.rejection:
            log.warning("%s: rejected: %s", uid, item.rejection)
        elif item.triage is not None:
            triage = item.triage
            log.info(
                "%s: %s p=%.3f%s",
                uid,
                triage.label,
                triage.probability,
                " FLAGGED" if triage.flagged else "",
            )

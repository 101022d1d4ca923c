"""For administrators: the service's state and the audit trail; and the public health
check and metrics, which name no patient and need no sign-in."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from core import audit
from core.service_state import COMPONENTS, ServiceState, assess, read_state
from core.texts import as_local
from web.deps import Admin, Db
from web.templates import page

router = APIRouter(include_in_schema=False)


def _state(request: Request) -> ServiceState:
    config = request.app.state.config
    return read_state(request.app.state.sessions, config.storage.directory)


@router.get("/status", response_class=HTMLResponse)
def status_page(request: Request, _admin: Admin) -> Response:
    """What `pneumotriage status` says, warnings included: with two workers, one that
    crash-loops is only a warning, and the page must not look healthy meanwhile."""
    config = request.app.state.config
    state = _state(request)
    return page(
        request,
        "status.html.j2",
        state=state,
        warnings=assess(state, config.storage, config.worker).warnings,
        model=request.app.state.model_status(),
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    db: Db,
    _admin: Admin,
    action: str = "",
    actor: str = "",
    study_instance_uid: str = "",
    since: datetime | None = None,
) -> Response:
    events = audit.events(
        db,
        since=None if since is None else as_local(since),
        action=action or None,
        actor=actor or None,
        study_instance_uid=study_instance_uid or None,
    )
    return page(
        request,
        "audit.html.j2",
        events=events,
        action=action,
        actor=actor,
        study_instance_uid=study_instance_uid,
    )


@router.get("/healthz")
def healthz(request: Request) -> Response:
    """200 when the database answers and a node and a worker reported in the last 30 s;
    503 with the reasons otherwise, for a load balancer or a monitoring check."""
    problems = _state(request).problems()
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ok"})


class _StateCollector:
    """Read at each scrape, so every web process reports the same shared state."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def collect(self) -> list[GaugeMetricFamily]:
        state = _state(self._request)
        up = GaugeMetricFamily("pneumotriage_database_up", "1 when the database answers")
        up.add_metric([], 1.0 if state.database_ok else 0.0)
        processes = GaugeMetricFamily(
            "pneumotriage_processes_alive",
            "node and worker processes reporting",
            labels=["component"],
        )
        for component in COMPONENTS:
            processes.add_metric([component], len(state.alive(component)))
        depth = GaugeMetricFamily("pneumotriage_queue_depth", "instances awaiting triage")
        depth.add_metric([], state.queue_depth)
        oldest = GaugeMetricFamily(
            "pneumotriage_oldest_pending_seconds", "age of the oldest instance awaiting triage"
        )
        oldest.add_metric([], state.oldest_pending_seconds or 0.0)
        hour = GaugeMetricFamily("pneumotriage_results_last_hour", "image results in the last hour")
        hour.add_metric([], state.results_last_hour)
        rejected = GaugeMetricFamily(
            "pneumotriage_rejections_last_day", "instances rejected in the last 24 hours"
        )
        rejected.add_metric([], sum(count for _reason, count in state.rejections))
        outbox = GaugeMetricFamily(
            "pneumotriage_outbox", "DICOM results by outbox status", labels=["status"]
        )
        for status, count in sorted(state.outbox.items()):
            outbox.add_metric([status], count)
        free = GaugeMetricFamily(
            "pneumotriage_storage_free_bytes", "free space in the storage folder"
        )
        free.add_metric([], float(state.free_bytes or 0))
        drifted = GaugeMetricFamily(
            "pneumotriage_drift_warning", "1 when the last weekly drift check warned"
        )
        drifted.add_metric([], float(state.drift is not None and state.drift.warned))
        return [up, processes, depth, oldest, hour, rejected, outbox, free, drifted]


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry = CollectorRegistry()
    registry.register(_StateCollector(request))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

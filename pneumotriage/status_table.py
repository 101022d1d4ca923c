"""`pneumotriage status`: the service's state for a person at a terminal, or as JSON for a
monitoring system; the verdict is the command's exit status either way."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from core.disk import MB
from core.service_state import ServiceState, Verdict
from core.texts import duration, local_time


def _facts(state: ServiceState) -> dict[str, object]:
    return {
        "database": "reachable" if state.database_ok else f"unavailable: {state.database_error}",
        "processes": [
            {
                "component": p.component,
                "process": p.process,
                "alive": p.alive,
                "seen_at": p.seen_at.isoformat(),
            }
            for p in state.processes
        ],
        "queue_depth": state.queue_depth,
        "oldest_pending_seconds": state.oldest_pending_seconds,
        "results_last_hour": state.results_last_hour,
        "last_result_at": state.last_result_at.isoformat() if state.last_result_at else None,
        "free_mb": None if state.free_bytes is None else state.free_bytes // MB,
        "outbox": state.outbox,
        "drift": None
        if state.drift is None
        else state.drift._asdict() | {"checked_at": state.drift.checked_at.isoformat()},
    }


def show(state: ServiceState, verdict: Verdict, fmt: str) -> None:
    if fmt == "json":
        record = {"status": verdict.label, "critical": verdict.critical}
        record |= {"warnings": verdict.warnings, **_facts(state)}
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("status", verdict.label)
    for line in verdict.critical + verdict.warnings:
        table.add_row("", line)
    table.add_row("database", "reachable" if state.database_ok else state.database_error)
    for component in ("node", "worker", "web"):
        alive = state.alive(component)
        where = ", ".join(
            p.process + (f" (port {p.detail['port']})" if "port" in p.detail else "") for p in alive
        )
        table.add_row(component, f"running: {where}" if alive else "not running")
    oldest = state.oldest_pending_seconds
    table.add_row(
        "queue",
        f"{state.queue_depth} waiting"
        + (f", the oldest for {duration(oldest)}" if oldest is not None else ""),
    )
    last = f"last {local_time(state.last_result_at)}" if state.last_result_at else "none yet"
    table.add_row("results", f"{state.results_last_hour} in the last hour; {last}")
    free = "unknown" if state.free_bytes is None else f"{state.free_bytes // MB:,} MB free"
    table.add_row("storage", free)
    if state.outbox:
        table.add_row("outbox", ", ".join(f"{n} {s}" for s, n in sorted(state.outbox.items())))
    if state.drift is not None:
        table.add_row("drift", f"{local_time(state.drift.checked_at)}: {state.drift.summary}")
    Console(width=100 if not sys.stdout.isatty() else None).print(table)

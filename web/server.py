"""Serving the application with uvicorn, alone (`pneumotriage web`) or in a thread beside the
node and the worker (`serve`)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from core.config import WebConfig

START_SECONDS = 30
# Open requests may finish for this long when the service stops.
GRACE_SECONDS = 10


def server(app: FastAPI, web: WebConfig) -> uvicorn.Server:
    """Forwarded headers are believed only from `web.trusted_proxies`. uvicorn's access log
    is off: it prints query strings, and web.security.access_log writes paths only."""
    proxies = ",".join(web.trusted_proxies)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=web.bind_address,
            port=web.port,
            ssl_certfile=str(web.tls_certificate) if web.tls_certificate else None,
            ssl_keyfile=str(web.tls_key) if web.tls_key else None,
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE_SECONDS,
        )
    )


class BackgroundServer:
    """uvicorn in a thread: it installs no signal handlers there, so the service's own
    SIGTERM handling stops it."""

    def __init__(self, app: FastAPI, web: WebConfig) -> None:
        self._server = server(app, web)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    def start(self) -> bool:
        """True once it listens. A server that cannot (a port taken since the preflight, a
        bad certificate) logs why and ends its thread; then this is False, and the caller
        stops rather than run on without the pages."""
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

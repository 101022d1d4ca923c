"""Serving the application with uvicorn, alone (`pneumotriage web`) or in a thread beside the
node and the worker (`serve`)."""

from __future__ import annotations

import threading

import uvicorn
from fastapi import FastAPI

from core.config import WebConfig


def server(app: FastAPI, web: WebConfig) -> uvicorn.Server:
    """Forwarded headers are believed only from `web.trusted_proxies`; access logs carry
    paths only, which hold UIDs and never names."""
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
            server_header=False,
        )
    )


class BackgroundServer:
    """uvicorn in a thread: it installs no signal handlers there, so the service's own
    SIGTERM handling stops it."""

    def __init__(self, app: FastAPI, web: WebConfig) -> None:
        self._server = server(app, web)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._server.started

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

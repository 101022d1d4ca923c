"""Checks that a command can do its job, run before a model loads or a database opens.

A port already taken or a storage path that is a file used to surface as a traceback after
the model had spent its seconds loading. Each check here is cheap and ends in one line that
names the key, its value and what to do, while the administrator is still at the terminal.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from core import tls
from core.config import Config, DicomConfig, ModelConfig
from core.config_errors import shown


class PreflightError(Exception):
    """One line for the administrator: the key, its value and what to do."""


def service(config: Config, *, node: bool, worker: bool, web: bool = False) -> None:
    """What `serve`, `node`, `worker` and `web` need before they start anything slow."""
    if node:
        _dicom_ports_and_files(config.dicom)
    if web:
        _port_free("web", config.web.bind_address, config.web.port)
        for key in ("tls_certificate", "tls_key"):
            path = getattr(config.web, key)
            if path is not None and not path.is_file():
                raise PreflightError(f"web.{key} = {shown(str(path))}: no such file")
    # The worker only reads received files, so it may run on a read-only copy of them.
    _folder("storage.directory", config.storage.directory, writable=node)
    database_folder(config)
    if worker:
        _model_present(config.model)
        _folder("reports.directory", config.reports.directory, writable=True)
        _destination_files(config)


def _dicom_ports_and_files(dicom: DicomConfig) -> None:
    """Each port the node will listen on, and its certificate files loaded as the node will
    load them, so that a wrong key is named now rather than at the first TLS client."""
    _port_free("dicom", dicom.bind_address, dicom.port, shared=dicom.reuse_port)
    if dicom.tls_port:
        _port_free(
            "dicom", dicom.bind_address, dicom.tls_port, key="tls_port", shared=dicom.reuse_port
        )
    if dicom.tls:
        try:
            tls.server_context(dicom)
        except tls.TlsError as exc:
            raise PreflightError(str(exc)) from None


def _destination_files(config: Config) -> None:
    """The forwarder runs beside the worker; its client certificates and trusted CAs."""
    for destination in config.forward.destinations:
        if destination.tls:
            try:
                tls.client_context(destination)
            except tls.TlsError as exc:
                raise PreflightError(str(exc)) from None


def database_folder(config: Config) -> None:
    """The service and `db upgrade` create the SQLite file, which needs its folder; the
    default `var/` is created on a fresh clone."""
    path = _sqlite_file(config.database.url)
    if path is None:
        return
    if path.is_dir():
        raise PreflightError(
            f"database.url = {shown(config.database.url)}: {path} is a folder;"
            " name a database file in it, like sqlite:///var/pneumotriage.db"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(
            f"database.url = {shown(config.database.url)}: cannot create the folder"
            f" {path.parent} ({exc.strerror}); choose a folder the service user can write"
        ) from None


def database_file(config: Config) -> None:
    """Queries only read: opening a missing SQLite file would create an empty one and hide
    a mistyped path behind an empty answer."""
    path = _sqlite_file(config.database.url)
    if path is not None and not path.is_file():
        raise PreflightError(
            f"database.url = {shown(config.database.url)}: no database file {path};"
            " correct the path, or create the database with `pneumotriage db upgrade`"
        )


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _port_free(
    section: str, bind_address: str, port: int, key: str = "port", shared: bool = False
) -> None:
    """Bind the way pynetdicom and uvicorn will (IPv4 preferred, address reuse on; the
    port shared with the node's other processes when `shared`) and let go at once."""
    address = shown(bind_address)
    try:
        entries = socket.getaddrinfo(bind_address, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PreflightError(
            f"{section}.bind_address = {address}: not an address of this machine ({exc.strerror});"
            " use 0.0.0.0 to listen on every interface"
        ) from None
    family, _, _, _, where = min(entries, key=lambda entry: entry[0] != socket.AF_INET)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(where)
    except OSError as exc:
        advice = {
            errno.EADDRINUSE: "already in use; stop the program listening there"
            " or choose another port",
            errno.EACCES: "not allowed (ports below 1024 need privileges);"
            " choose a port above 1023",
            errno.EADDRNOTAVAIL: "the address is not one of this machine's;"
            " use 0.0.0.0 to listen on every interface",
        }.get(exc.errno or 0, f"cannot listen there ({exc.strerror})")
        raise PreflightError(
            f"{section}.{key} = {port} on {section}.bind_address = {address}: {advice}"
        ) from None


def _folder(key: str, folder: Path, *, writable: bool) -> None:
    """Created when missing, so the defaults under `var/` work on a fresh clone; written
    once with an empty probe file, because permissions alone do not tell (root, ACLs,
    read-only mounts)."""
    if folder.exists() and not folder.is_dir():
        raise PreflightError(f"{key} = {shown(str(folder))}: is a file; name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if writable:
            descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".preflight-")
            os.close(descriptor)
            Path(probe).unlink()
    except OSError as exc:
        raise PreflightError(
            f"{key} = {shown(str(folder))}: cannot create or write it ({exc.strerror});"
            " choose a folder the service user can write"
        ) from None


def _model_present(model: ModelConfig) -> None:
    """model_store's own message (folder looked in, shipped names), under the key."""
    from core.model_store import ModelError, model_dir

    try:
        model_dir(model.directory, model.name)
    except ModelError as exc:
        raise PreflightError(f"model.name = {shown(model.name)}: {exc}") from None


def model_folder(model: ModelConfig, name_or_path: str | None) -> None:
    """A model folder named on the command line (`--model`), else the configured one."""
    if name_or_path is None:
        _model_present(model)
        return
    from core.model_store import ModelError, model_dir

    try:
        model_dir(model.directory, name_or_path)
    except ModelError as exc:
        raise PreflightError(str(exc)) from None

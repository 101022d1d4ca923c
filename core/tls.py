"""TLS contexts for DICOM, the node's as a server and the forwarder's as a client.

Both follow the secure transport profiles of PS3.15 B.9 and BCP 195 (RFC 9325): TLS 1.2 or
newer, Python's default cipher suites (forward secrecy, AEAD ciphers first) and, as a
client, the peer's certificate checked against the trusted CA certificates and its name.
A file that cannot be loaded is a TlsError naming the key, the file and OpenSSL's reason,
because a traceback from deep inside `ssl` tells an administrator nothing.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

from core.config import Destination, DicomConfig
from core.config_errors import shown

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# What OpenSSL puts around a reason: the library in brackets, the source line in parentheses.
_OPENSSL_DECORATION = re.compile(r"^\[\w*\]\s*|\s*\(_ssl\.c:\d+\)$")


class TlsError(Exception):
    """One line: the key, its file, and why OpenSSL could not use it."""


def server_context(config: DicomConfig) -> ssl.SSLContext:
    """The node's side: its certificate chain and, with `tls_ca_certificates`, client
    certificates checked against them; demanded with `tls_require_client_certificate`,
    checked when presented otherwise."""
    if config.tls_certificate is None or config.tls_key is None:
        raise TlsError("dicom.tls_certificate and dicom.tls_key are not set")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION

    def label(key: str) -> str:
        return f"dicom.{key}"

    _load_chain(context, label, config.tls_certificate, config.tls_key)
    if config.tls_ca_certificates is not None:
        _load_trust(context, label, config.tls_ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if config.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def client_context(destination: Destination) -> ssl.SSLContext:
    """The forwarder's side towards one destination: its certificate verified against
    `tls_ca_certificates` (or the system's CA certificates) and its name checked, with a
    client certificate of our own when the destination asks for one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION

    def label(key: str) -> str:
        return f"{key} of forward destination {destination.name}"

    if destination.tls_ca_certificates is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_trust(context, label, destination.tls_ca_certificates)
    if destination.tls_certificate is not None and destination.tls_key is not None:
        _load_chain(context, label, destination.tls_certificate, destination.tls_key)
    return context


def failure(exc: OSError) -> str:
    """What went wrong in a handshake, in a few words: `[SSL: WRONG_VERSION_NUMBER] wrong
    version number (_ssl.c:1006)` becomes `wrong version number`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = exc.strerror or str(exc) or type(exc).__name__
    return _OPENSSL_DECORATION.sub("", text)


def _load_chain(
    context: ssl.SSLContext, label: Callable[[str], str], certificate: Path, key: Path
) -> None:
    _readable(label("tls_certificate"), certificate)
    _readable(label("tls_key"), key)

    def encrypted() -> bytes:
        """Without a callback OpenSSL would prompt on the terminal, and a service hangs."""
        raise TlsError(
            f"cannot load {label('tls_key')} {shown(str(key))}: the key is encrypted;"
            " give the service an unencrypted key readable only by its user"
        )

    try:
        context.load_cert_chain(certificate, key, password=encrypted)
    except ssl.SSLError as exc:
        reason = failure(exc)
        if reason == "PEM lib":
            reason = "not a PEM certificate and its PEM key"
        raise TlsError(
            f"cannot load {label('tls_certificate')} {shown(str(certificate))} with"
            f" {label('tls_key')} {shown(str(key))}: {reason}"
        ) from None


def _load_trust(context: ssl.SSLContext, label: Callable[[str], str], path: Path) -> None:
    _readable(label("tls_ca_certificates"), path)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot load {label('tls_ca_certificates')} {shown(str(path))}: {failure(exc)};"
            " expected PEM certificates"
        ) from None


def _readable(key: str, path: Path) -> None:
    """OpenSSL reports a missing file as `[Errno 2] No such file or directory`, without
    saying which of the files it was."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsError(f"cannot load {key} {shown(str(path))}: {exc.strerror}") from None

"""DICOM TLS: the node served to DCMTK's echoscu and storescu with `+tls`, and results
forwarded to an Orthanc that speaks only TLS and wants the forwarder's certificate.

Certificates come from a throwaway CA made with the openssl command for this module: the
node's and the PACS's for 127.0.0.1, a modality's, and one from a CA nobody trusts.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import raw_peer
from conftest import ROOT, Orthanc, Service, free_port, require_tools, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write
from pydicom import dcmread
from pynetdicom.sop_class import Verification
from test_interop import store_ok
from test_pacs_outputs import chest_study, outbox, pacs_instances

from core.config import ConfigError, Destination, load_config
from core.tls import TlsError, client_context, server_context
from forwarder.scu import send
from pneumotriage import preflight

pytestmark = pytest.mark.interop

CONFIG = ROOT / "config.toml"
REQUEST_SECONDS = 2


@dataclass(frozen=True)
class Pair:
    certificate: Path
    key: Path

    def tls(self) -> list[str]:
        """DCMTK's options to present this certificate."""
        return ["+tls", str(self.key), str(self.certificate)]


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Pair
    modality: Pair
    stranger: Pair


def _openssl(directory: Path, *arguments: str) -> None:
    subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)


def _authority(directory: Path, name: str) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        directory,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN=pneumotriage test {name}"),
        *("-keyout", str(pair.key), "-out", str(pair.certificate)),
    )
    return pair


def _issue(directory: Path, authority: Pair, name: str, extensions: str, serial: int) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    extension_file = directory / f"{name}.ext"
    extension_file.write_text(extensions, encoding="utf-8")
    _openssl(
        directory,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-subj", f"/CN={name}", "-keyout", str(pair.key), "-out", str(request)),
    )
    _openssl(
        directory,
        *("x509", "-req", "-in", str(request), "-days", "2", "-set_serial", str(serial)),
        *("-CA", str(authority.certificate), "-CAkey", str(authority.key)),
        *("-extfile", str(extension_file), "-out", str(pair.certificate)),
    )
    return pair


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    require_tools("openssl")
    directory = tmp_path_factory.mktemp("certificates")
    ca = _authority(directory, "ca")
    other_ca = _authority(directory, "other-ca")
    server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    client = "extendedKeyUsage=clientAuth\n"
    return Certificates(
        ca=ca.certificate,
        server=_issue(directory, ca, "server", server, 2),
        modality=_issue(directory, ca, "MODALITY", client, 3),
        stranger=_issue(directory, other_ca, "STRANGER", client, 4),
    )


def node_with_tls(workdir: Path, certificates: Certificates, **overrides: str) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dicom_tls_certificate": str(certificates.server.certificate),
        "dicom_tls_key": str(certificates.server.key),
        "dicom_association_request_timeout_seconds": str(REQUEST_SECONDS),
    }
    return Service(workdir, command="node", **(settings | overrides))


def peer(tool: str, port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool,
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            "PNEUMOTRIAGE",
            "127.0.0.1",
            str(port),
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def echoed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "Received Echo Response (Success)" in result.stderr


def trusting(certificates: Certificates) -> list[str]:
    return ["+cf", str(certificates.ca)]


def warnings_about(node: Service, text: str) -> list[str]:
    return [line for line in node.log().splitlines() if text in line and " WARNING " in line]


@pytest.fixture(scope="module")
def tls_node(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates, dcmtk: None
) -> Iterator[Service]:
    """TLS instead of plain DICOM on the node's port; client certificates checked when
    presented, not demanded."""
    node = node_with_tls(
        tmp_path_factory.mktemp("tls-node"),
        certificates,
        dicom_tls_ca_certificates=str(certificates.ca),
    ).start()
    yield node
    node.stop()


def test_echo_and_store_over_tls(tls_node: Service, certificates: Certificates) -> None:
    assert f"DICOM TLS on 0.0.0.0:{tls_node.port} (client certificates optional)" in tls_node.log()
    assert echoed(
        peer("echoscu", tls_node.port, *certificates.modality.tls(), *trusting(certificates))
    )
    assert echoed(peer("echoscu", tls_node.port, "+tla", *trusting(certificates)))
    image = write(make_dataset(grey_pixels(fixture_images()[0])), tls_node.workdir / "in")
    stored = peer(
        "storescu", tls_node.port, *certificates.modality.tls(), *trusting(certificates), str(image)
    )
    assert store_ok(stored.stderr) == 1, stored.stderr
    sop_uid = str(dcmread(image).SOPInstanceUID)
    assert tls_node.sql("SELECT status FROM instances WHERE sop_instance_uid = ?", sop_uid) == [
        ("pending",)
    ]


def test_plain_client_on_the_tls_port_is_refused_and_the_node_keeps_serving(
    tls_node: Service, certificates: Certificates
) -> None:
    before = len(warnings_about(tls_node, "TLS handshake failed: wrong version number"))
    assert not echoed(peer("echoscu", tls_node.port))
    assert not echoed(peer("echoscu", tls_node.port, *certificates.stranger.tls(), "-ic"))
    wait_until(
        lambda: (
            len(warnings_about(tls_node, "TLS handshake failed: wrong version number")) > before
        ),
        10,
        "the refused plain client in the log",
    )
    assert warnings_about(tls_node, "certificate verify failed")
    assert echoed(peer("echoscu", tls_node.port, "+tla", *trusting(certificates)))
    assert "Traceback" not in tls_node.log()


def test_a_silent_connection_holds_up_no_one(tls_node: Service, certificates: Certificates) -> None:
    """The handshake is made on the connection's own thread, within the request time."""
    with socket.create_connection(("127.0.0.1", tls_node.port)) as silent:
        started = time.monotonic()
        assert echoed(peer("echoscu", tls_node.port, "+tla", *trusting(certificates)))
        assert time.monotonic() - started < REQUEST_SECONDS
        silent.settimeout(REQUEST_SECONDS * 5)
        assert silent.recv(1) == b""
    wait_until(
        lambda: warnings_about(tls_node, f"no TLS handshake within {REQUEST_SECONDS} s"),
        10,
        "the silent connection to be logged",
    )


def test_pdu_limits_hold_over_tls(tls_node: Service, certificates: Certificates) -> None:
    context = ssl.create_default_context(cafile=certificates.ca)
    raw = socket.create_connection(("127.0.0.1", tls_node.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as connection:
        connection.sendall(raw_peer.association_request(Verification))
        assert raw_peer.read_pdu(connection)[0] == raw_peer.A_ASSOCIATE_AC
        connection.sendall(raw_peer.HEADER.pack(0x04, 0, 200_000_000))
        assert raw_peer.read_pdu(connection)[0] == raw_peer.A_ABORT
    assert warnings_about(tls_node, "announces 200000000 bytes")


def test_required_client_certificate(
    tmp_path: Path, certificates: Certificates, dcmtk: None
) -> None:
    node = node_with_tls(
        tmp_path,
        certificates,
        dicom_tls_ca_certificates=str(certificates.ca),
        dicom_tls_require_client_certificate="true",
    ).start()
    try:
        assert "(client certificates required)" in node.log()
        assert not echoed(peer("echoscu", node.port, "+tla", *trusting(certificates)))
        assert not echoed(
            peer("echoscu", node.port, *certificates.stranger.tls(), *trusting(certificates))
        )
        assert echoed(
            peer("echoscu", node.port, *certificates.modality.tls(), *trusting(certificates))
        )
        assert warnings_about(node, "TLS handshake failed: peer did not return a certificate")
        assert warnings_about(node, "certificate verify failed: unable to get local issuer")
    finally:
        node.stop()


def test_tls_port_beside_the_plain_port(
    tmp_path: Path, certificates: Certificates, dcmtk: None
) -> None:
    tls_port = free_port()
    node = node_with_tls(tmp_path, certificates, dicom_tls_port=str(tls_port)).start()
    try:
        assert f"listening on 0.0.0.0:{node.port}" in node.log()
        assert f"DICOM TLS on 0.0.0.0:{tls_port} (client certificates not requested)" in node.log()
        assert echoed(peer("echoscu", node.port))
        assert echoed(peer("echoscu", tls_port, "+tla", *trusting(certificates)))
        assert not echoed(peer("echoscu", node.port, "+tla", *trusting(certificates)))
        wait_until(
            lambda: warnings_about(node, "(a TLS handshake: the client speaks TLS)"),
            10,
            "the TLS client on the plain port in the log",
        )
    finally:
        assert node.stop() == 0
    assert "DICOM node stopped" in node.log()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TLS_CERTIFICATE": "node.crt"}, "tls_certificate and tls_key go together"),
        ({"TLS_PORT": "2762"}, "need tls_certificate and tls_key"),
        (
            {"TLS_CERTIFICATE": "n.crt", "TLS_KEY": "n.key", "TLS_REQUIRE_CLIENT_CERTIFICATE": "1"},
            "tls_require_client_certificate needs tls_ca_certificates",
        ),
        (
            {"TLS_CERTIFICATE": "n.crt", "TLS_KEY": "n.key", "TLS_PORT": "11112"},
            "tls_port = 11112 is also port",
        ),
    ],
)
def test_inconsistent_tls_settings_are_refused(settings: dict[str, str], message: str) -> None:
    environ = {f"PNEUMOTRIAGE_DICOM_{key}": value for key, value in settings.items()}
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, environ=environ)


def test_certificate_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[dicom]\ntls_certificate = "certs/node.crt"\ntls_key = "certs/node.key"\n'
        'tls_ca_certificates = "certs/ca.crt"\n\n[[forward.destinations]]\n'
        'ae_title = "PACS"\nhost = "pacs.example.org"\nport = 2762\ntls = true\n'
        'tls_ca_certificates = "certs/pacs-ca.crt"\n',
        encoding="utf-8",
    )
    config = load_config(path, environ={})
    certs = tmp_path / "certs"
    assert config.dicom.tls_certificate == certs / "node.crt"
    assert config.dicom.tls_ca_certificates == certs / "ca.crt"
    destination = config.forward.destinations[0]
    assert destination.tls_ca_certificates == certs / "pacs-ca.crt"
    assert destination.server_name == "pacs.example.org"


def test_unusable_certificate_files_stop_the_node_in_one_line(
    tmp_path: Path, certificates: Certificates
) -> None:
    node = node_with_tls(tmp_path, certificates, dicom_tls_key=str(certificates.modality.key))
    result = node.cli("node", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f'pneumotriage: cannot load dicom.tls_certificate "{certificates.server.certificate}"'
        f' with dicom.tls_key "{certificates.modality.key}": key values mismatch'
    ]
    missing = tmp_path / "missing-ca.crt"
    node = node_with_tls(tmp_path, certificates, dicom_tls_ca_certificates=str(missing))
    assert node.cli("node", check=False).stderr.strip() == (
        f'pneumotriage: cannot load dicom.tls_ca_certificates "{missing}": No such file or'
        " directory"
    )


def test_an_encrypted_key_is_refused_rather_than_prompted_for(
    tmp_path: Path, certificates: Certificates
) -> None:
    """OpenSSL would ask for the passphrase on the terminal, and a service would hang."""
    encrypted = tmp_path / "encrypted.key"
    _openssl(
        tmp_path,
        *("pkey", "-in", str(certificates.server.key), "-aes256", "-passout", "pass:secret"),
        *("-out", str(encrypted)),
    )
    config = load_config(
        CONFIG,
        environ={
            "PNEUMOTRIAGE_DICOM_TLS_CERTIFICATE": str(certificates.server.certificate),
            "PNEUMOTRIAGE_DICOM_TLS_KEY": str(encrypted),
        },
    )
    with pytest.raises(TlsError, match=f'^cannot load dicom.tls_key "{encrypted}": the key is'):
        server_context(config.dicom)


def test_a_taken_tls_port_is_named_before_start(certificates: Certificates) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        environ = {
            "PNEUMOTRIAGE_DICOM_PORT": str(free_port()),
            "PNEUMOTRIAGE_DICOM_TLS_PORT": str(taken.getsockname()[1]),
            "PNEUMOTRIAGE_DICOM_TLS_CERTIFICATE": str(certificates.server.certificate),
            "PNEUMOTRIAGE_DICOM_TLS_KEY": str(certificates.server.key),
        }
        config = load_config(CONFIG, environ=environ)
        with pytest.raises(preflight.PreflightError, match=r"^dicom\.tls_port = \d+ on .*in use"):
            preflight.service(config, node=True, worker=False)


@pytest.fixture(scope="module")
def tls_pacs(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[Orthanc]:
    """Orthanc speaking only DICOM TLS, trusting the test CA's clients and no others."""
    require_tools("Orthanc")
    pacs = Orthanc(
        tmp_path_factory.mktemp("tls-pacs"),
        settings={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(certificates.server.certificate),
            "DicomTlsPrivateKey": str(certificates.server.key),
            "DicomTlsTrustedCertificates": str(certificates.ca),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    pacs.start()
    yield pacs
    pacs.stop()


def pacs_destination(pacs: Orthanc, certificates: Certificates, **settings: object) -> Destination:
    return Destination.model_validate(
        {
            "ae_title": pacs.ae_title,
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "tls": True,
            "tls_ca_certificates": certificates.ca,
            "tls_certificate": certificates.modality.certificate,
            "tls_key": certificates.modality.key,
        }
        | settings
    )


def test_results_are_forwarded_over_tls(
    tmp_path: Path, certificates: Certificates, tls_pacs: Orthanc, dcmtk: None
) -> None:
    destination = pacs_destination(tls_pacs, certificates)
    (tmp_path / "node").mkdir()
    service = Service(
        tmp_path / "node",
        forward_destinations=json.dumps([destination.model_dump(mode="json")]),
        forward_interval_seconds="0.5",
        forward_retry_seconds="0.5",
        worker_study_settle_seconds="1",
    ).start()
    try:
        study = chest_study(tmp_path / "study", count=1)
        assert store_ok(service.store(*study).stderr) == 1
        wait_until(
            lambda: outbox(service) and all(r["status"] == "sent" for r in outbox(service)),
            120,
            "the results to be sent over TLS",
        )
    finally:
        service.stop()
    sent = {r["sop_instance_uid"]: r["kind"] for r in outbox(service)}
    assert "sr" in sent.values()
    arrived = pacs_instances(tls_pacs, str(dcmread(study[0]).StudyInstanceUID))
    assert set(sent) <= set(arrived)


def test_a_refused_tls_peer_says_why(
    tmp_path: Path, certificates: Certificates, tls_pacs: Orthanc
) -> None:
    image = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path)
    files = {1: (str(dcmread(image).SOPClassUID), image)}

    def answer(**settings: object) -> str:
        destination = pacs_destination(tls_pacs, certificates, **settings)
        return send("PNEUMOTRIAGE", destination, files, 10, client_context(destination))[1].comment

    assert answer(tls_certificate=None, tls_key=None) == "TLS: tlsv13 alert certificate required"
    assert answer(tls_ca_certificates=None).startswith("TLS: certificate verify failed: ")
    assert answer(tls_server_name="pacs.example.org").startswith(
        "TLS: certificate verify failed: Hostname mismatch"
    )

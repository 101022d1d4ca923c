"""Received data is written under the storage folder only, and nothing of it outlives an
abort, a reset, a failed store or a crash."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import raw_peer
from conftest import IN_CI, Service, wait_until
from dicom_factory import fixture_images, grey_pixels, make_dataset, write

pytestmark = pytest.mark.interop

PATIENT = "Thistlewood^Marguerite"

# Run the node as the documented systemd unit does (ProtectSystem=strict): the system temp
# folders, TMPDIR and the working directory (Python's last resort for temporary files)
# read-only, only the service's own folder writable.
READ_ONLY_TEMP = """set -e
read_only() { mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; }
read_only /tmp
read_only /var/tmp
read_only "$PWD"
mount --bind "$WORK" "$WORK"; mount -o remount,bind,rw "$WORK"
read_only "$TMPDIR"
exec "$@"
"""


def require_mount_namespace() -> None:
    if os.geteuid() == 0 and shutil.which("unshare"):
        return
    message = "needs root and unshare(1) to run the node with read-only temp folders"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def stored_files(service: Service) -> list[Path]:
    return [p for p in service.storage.rglob("*.dcm") if not p.parent.name.startswith(".")]


def test_node_receives_with_the_system_temp_folders_read_only(tmp_path: Path, dcmtk: None) -> None:
    require_mount_namespace()
    read_only = tmp_path / "read-only-tmp"
    read_only.mkdir()
    node = Service(tmp_path, command="node")
    node.env.update(TMPDIR=str(read_only), WORK=str(tmp_path))
    node.launcher = ["unshare", "--mount", "sh", "-c", READ_ONLY_TEMP, "sh"]
    node.start()
    try:
        image = write(make_dataset(grey_pixels(fixture_images()[0])), tmp_path / "dicom")
        result = node.store(image)
        assert "Received Store Response (Success)" in result.stderr, result.stderr
        ((file_path,),) = node.sql(
            "SELECT file_path FROM instances WHERE sop_instance_uid = ?", image.stem
        )
        assert (node.storage / file_path).read_bytes()[128:132] == b"DICM"
    finally:
        assert node.stop() == 0


def test_nothing_received_outlives_an_abort_a_reset_a_failed_store_or_a_kill(
    tmp_path: Path, dcmtk: None
) -> None:
    temp = tmp_path / "own-tmp"
    temp.mkdir()
    big = np.kron(grey_pixels(fixture_images()[0]), np.ones((4, 4), np.uint8))
    dataset = make_dataset(big, patient_name=PATIENT)
    image = write(dataset, tmp_path / "dicom")
    pdus = raw_peer.store_pdus(image)
    assert len(pdus) > 4, "the data set must span several PDUs to be cut off"

    def start(log_name: str) -> Service:
        service = Service(tmp_path, command="node")
        service.env["TMPDIR"] = str(temp)
        service.log_path = tmp_path / log_name
        return service.start()

    def leftovers(service: Service) -> list[Path]:
        receiving = service.storage / ".receiving"
        return [*temp.iterdir(), *(p for p in receiving.rglob("*") if p.is_file())]

    def half_sent(service: Service) -> socket.socket:
        connection = raw_peer.associate(service.port, dataset.SOPClassUID)
        connection.sendall(b"".join(pdus[: len(pdus) // 2]))
        partial = wait_until(lambda: leftovers(service), 10, "the partly received data set")
        for part in PATIENT.split("^"):
            assert all(part not in path.name for path in partial)
        # The names are random either way; what matters is where the data went.
        assert list(temp.iterdir()) == [], "received data went to the system temp folder"
        return connection

    node = start("first.log")
    try:
        aborted = half_sent(node)
        aborted.sendall(raw_peer.HEADER.pack(raw_peer.A_ABORT, 0, 4) + bytes(4))
        wait_until(lambda: not leftovers(node), 10, "removal after an abort")
        aborted.close()

        raw_peer.reset(half_sent(node))
        wait_until(lambda: not leftovers(node), 10, "removal after a reset")

        blocker = node.storage / dataset.StudyInstanceUID
        blocker.write_bytes(b"not a folder")
        refused = node.store(image)
        assert "Refused: OutOfResources" in refused.stderr, refused.stderr
        assert leftovers(node) == [], "a failed store left its data behind"
        blocker.unlink()

        held = half_sent(node)
        assert node.process is not None
        node.process.kill()
        node.process.wait(timeout=30)
        held.close()
        assert leftovers(node), "the kill should have left a partial data set"
    finally:
        node.stop()

    restarted = start("restarted.log")
    try:
        assert leftovers(restarted) == []
        assert "discarded 1 partial file(s) left by an interrupted run" in restarted.log()
        assert "Received Store Response (Success)" in restarted.store(image).stderr
        assert leftovers(restarted) == [] and len(stored_files(restarted)) == 1
    finally:
        assert restarted.stop() == 0


def test_a_node_clears_only_what_it_and_dead_nodes_of_its_host_left(tmp_path: Path) -> None:
    """Node processes share the storage folder: one that starts removes its own leftovers,
    loose files and those of a dead process of its host, never a live sibling's files or
    another host's."""
    from dicom_node.process_folders import _host, clear_abandoned, own_folder

    parent = tmp_path / ".receiving"
    mine = own_folder(parent)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    folders = {
        "mine": mine,
        "dead": parent / f"{_host()}-{dead.pid}",
        "sibling": parent / f"{_host()}-{os.getppid()}",
        "elsewhere": parent / "another-host-1",
    }
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
        (folder / "receiving-x.dcm").write_bytes(b"partial")
    (parent / "receiving-loose.dcm").write_bytes(b"partial")
    assert clear_abandoned(parent) == 2
    assert not folders["dead"].exists() and not (parent / "receiving-loose.dcm").exists()
    for name in ("mine", "sibling", "elsewhere"):
        assert (folders[name] / "receiving-x.dcm").exists(), name

"""The worker and node processes that `serve` starts beside itself.

One Python process runs one thread at a time: a worker converting and inferring in the
node's process holds up its association threads, and they hold it up. `serve --nodes N
--workers M` keeps one node (and the web application) in its own process and starts N-1
more `node` and M `worker` processes of the same configuration. They coordinate only
through the database (leased claims, the registration lock, the daily jobs' rows), exactly
as processes on other machines would; the node processes share the DICOM port through
SO_REUSEPORT. This process watches them: one that dies is started again (and logged at
ERROR), and all of them are stopped with it; if it is killed itself, they stop on their own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("pneumotriage.processes")

# A process that keeps dying is started again at most this often.
RESTART_SECONDS = 10.0
# How often a started process looks whether `serve` is still there.
FOLLOW_SECONDS = 1.0
# How a worker exits on a fault that starting it again does not mend (a model that does not
# load), and so how `serve` exits when one of its processes did: EX_CONFIG of sysexits.h,
# apart from the 2 of every other error, so that a service manager can be told not to
# restart on it while it still restarts when, say, the database was not up yet.
FAULT_STATUS = 78


@dataclass
class _Child:
    command: str
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)


class Children:
    def __init__(self, launch: Sequence[str], commands: Sequence[str], env: dict[str, str]) -> None:
        """`launch` is the command line up to the subcommand (interpreter, module, --config);
        each of `commands` ("node" or "worker") is one more process."""
        self.launch = list(launch)
        self.commands = list(commands)
        self.env = env
        self.children: list[_Child] = []
        # FAULT_STATUS once a process stopped on a fault that starting it again cannot mend;
        # `serve` then stops too, with it, rather than look ready while nothing is triaged.
        self.failed_status = 0
        # Once stopping, a child that exits is never started again; the lock keeps `watch`
        # (on the scheduler's thread) from starting one while `terminate` runs.
        self._lock = threading.Lock()
        self._stopping = False

    def _spawn(self, command: str) -> _Child:
        # Our own interpreter and module with a fixed subcommand: no outside input. A group
        # of its own, so that Ctrl-C in a terminal reaches `serve` alone, which stops it in
        # order, rather than interrupt it half-way through loading the model.
        process = subprocess.Popen(  # noqa: S603
            [*self.launch, command, "--follow", str(os.getpid())], env=self.env, process_group=0
        )
        log.info("started a %s process, pid %d", command, process.pid)
        return _Child(command, process)

    def start(self) -> None:
        self.children = [self._spawn(command) for command in self.commands]

    def watch(self) -> None:
        """Start again any process that has exited, once its restart interval has passed;
        one that exited with FAULT_STATUS stops `serve`."""
        with self._lock:
            if not self._stopping:
                self._restart_exited()

    def _restart_exited(self) -> None:
        for index, child in enumerate(self.children):
            code = child.process.poll()
            if code == FAULT_STATUS:
                log.error(
                    "%s process %d stopped on the fault above; stopping",
                    child.command,
                    child.process.pid,
                )
                self.failed_status = code
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if code is None or time.monotonic() - child.started_at < RESTART_SECONDS:
                continue
            log.error(
                "%s process %d exited with status %d; starting it again",
                child.command,
                child.process.pid,
                code,
            )
            self.children[index] = self._spawn(child.command)

    def terminate(self) -> None:
        """SIGTERM to all: each stops taking work and finishes what it has in flight."""
        with self._lock:
            self._stopping = True
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)

    def wait(self, grace_seconds: float) -> None:
        """Until all have exited; SIGKILL to those still running after the grace."""
        deadline = time.monotonic() + grace_seconds
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s process %d did not stop; killed", child.command, child.process.pid)
                child.process.kill()
                child.process.wait()


def environment(share_port: bool) -> dict[str, str]:
    """The children's environment: this one's, with the DICOM port shared when several
    node processes listen on it."""
    env = dict(os.environ)
    if share_port:
        env["PNEUMOTRIAGE_DICOM_REUSE_PORT"] = "true"
    return env


def follow_parent(parent: int) -> None:
    """Stop this process, as SIGTERM would, once `parent` is no longer its parent.

    A `serve` killed with SIGKILL cannot stop its processes; left running, an orphaned
    worker would go on claiming beside the `serve` started in its place. Polling the parent
    id is enough: once the parent is gone, the orphan is adopted and the id changes.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(FOLLOW_SECONDS)
        log.warning("process %d, which started this one, is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()

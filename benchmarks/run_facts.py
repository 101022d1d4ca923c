"""What the benchmarks share: the commit and machine a result records, the CPU time of a
process tree, a throwaway PostgreSQL database, and the head of each result file.

The tree may change while a benchmark runs and these machines are shared, so a result
says which commit it measured (marked when tracked files differed) and how loaded the
machine was when it ended.
"""

from __future__ import annotations

import os
import platform
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

ROOT = Path(__file__).resolve().parent.parent


class SetupError(Exception):
    """Something outside the benchmark is missing or broken; its message is the one line."""


def produced_by(title: str, command: str) -> list[str]:
    """The first lines of a result file: what it is and the command that made it."""
    return [f"# {title}", "", "Produced by:", "", "```sh", command, "```", ""]


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the given server, dropped afterwards even if the run fails."""
    name = f"pneumotriage_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0]
        raise SetupError(f"PostgreSQL not reachable at {server_url}: {reason}") from None
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def revision(checkout: Path = ROOT) -> str:
    """The commit measured; call it when the run starts."""
    git = ["git", "-C", str(checkout)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            # Result files written by earlier runs are not changes to what is measured.
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ":!benchmarks/results"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if changed else "")


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {len(os.sched_getaffinity(0))}"
        f" cores, load average {os.getloadavg()[0]:.1f} at the end"
    )


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and all its descendants, the live, the exited but not yet
    reaped (whose times stay in their own /proc entry) and the reaped (whose times their
    parent has in cutime and cstime): storescp --fork and `serve --workers N` do their work
    in children."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(value) for value in fields[11:15])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")

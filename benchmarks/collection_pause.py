"""How long a full garbage collection stops a node process, with and without start-up frozen.

pynetdicom's acceptor calls `gc.collect()` every 60 passes of its loop (every 60
connections under load), and while it runs no association thread moves. This imports what
the `serve` process holds (the node, the web application and their libraries), builds the
web application as `serve` does, and times full collections before and after `gc.freeze()`
(what `pneumotriage.service` does once start-up is done), in the same run. Wall time, median
of `--rounds`.

    .venv/bin/python benchmarks/collection_pause.py [--rounds 9] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run_facts import ROOT, machine, produced_by, revision

RESULTS = ROOT / "benchmarks" / "results" / "collection_pause.md"


def full_collections(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import dicom_node.server  # noqa: F401
    from core.config import load_config
    from pneumotriage.service import open_database, web_application

    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            ROOT / "config.toml", {"PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{folder}/p.db"}
        )
        database = open_database(config, migrate=True)
        web_application(config, database)
        objects = len(gc.get_objects())
        before = full_collections(args.rounds)
        gc.freeze()
        after = full_collections(args.rounds)
        database.engine.dispose()

    rows = [
        ("objects tracked by the collector", f"{objects:,}"),
        ("full collection, start-up not frozen, ms", f"{1000 * statistics.median(before):.1f}"),
        ("full collection, start-up frozen, ms", f"{1000 * statistics.median(after):.2f}"),
    ]
    command = ".venv/bin/python benchmarks/collection_pause.py" + (
        f" --rounds {args.rounds}" if args.rounds != 9 else ""
    )
    lines = [
        *produced_by("Collection pause", command),
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {revision()} on {machine()};"
        f" the node's and web application's modules loaded, medians of {args.rounds}.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    for name, value in rows:
        print(f"{name}: {value}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

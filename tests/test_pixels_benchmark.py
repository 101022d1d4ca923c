"""The conversion benchmark runs, and a 4,300 x 3,500 16-bit image converts in bounded memory.

Timings are reported by benchmarks/conversion_speed.py, not asserted here: shared CI
machines make wall-clock limits flaky. Memory is asserted, measured in fresh processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, require_tools
from dicom_factory import DCMTK_TOOLS, ENCODINGS

BENCHMARK = ROOT / "benchmarks" / "conversion_speed.py"
IMAGE_MB = 4300 * 3500 * 2 / 1e6


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARK), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=ROOT,
    )


def test_benchmark_reports_every_encoding(tmp_path: Path) -> None:
    require_tools(*DCMTK_TOOLS)
    rows = tmp_path / "rows.json"
    result = run("--rows", "300", "--columns", "240", "--repeat", "1", "--json", str(rows))
    assert "| encoding | bits |" in result.stdout
    measured = json.loads(rows.read_text())
    assert {r["encoding"] for r in measured} >= set(ENCODINGS)
    for row in measured:
        assert row["decode_ms"] > 0 and row["conversion_ms"] > 0 and row["node_path_ms"] > 0


def test_very_large_image_converts_in_a_few_copies_of_memory(tmp_path: Path) -> None:
    """Native pixel data is read in place: well under one copy of the image. Decoders need
    their output plus the codestream: a few copies at most."""
    require_tools(*DCMTK_TOOLS)
    report = tmp_path / "memory.json"
    run("--memory", "--encodings", "explicit-le", "explicit-be", "rle", "--json", str(report))
    for row in json.loads(report.read_text()):
        native = row["encoding"] in {"explicit-le", "explicit-be"}
        limit = 0.5 * IMAGE_MB if native else 4 * IMAGE_MB
        assert row["tracemalloc_peak_mb"] <= limit, row
        assert row["resident_peak_growth_mb"] <= limit, row

"""How much the model-input conversion costs next to a plain pydicom decode, per encoding.

A fixture radiograph is enlarged to a realistic detector size (2,000 x 2,500 by default),
stored at 12 and 16 bits and written in every transfer syntax the node accepts. For each
file and repetition, in interleaved order so that drift in machine load hits every row
alike, three things are timed on a freshly read dataset (reading and, for deflated files,
inflating are not timed):

* decode: `ds.pixel_array`, a plain pydicom decode;
* conversion: `core.pixels.convert_frame` on that decoded array, i.e. everything the node
  does after decoding (block means, LUTs, window, resize, stretch);
* node path: `core.pixels.convert_dataset`, which decodes by itself (native pixel data in
  place, without the copy `pixel_array` makes) and converts: what the worker spends.

The table reports medians and two ratios: conversion / decode, and (node path - decode) /
decode, the time the node adds on top of merely decoding the image. `--memory` measures
the peak memory of converting a 4,300 x 3,500 16-bit image instead.

    .venv/bin/python benchmarks/conversion_speed.py --repeat 15
    .venv/bin/python benchmarks/conversion_speed.py --memory
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicom_factory import (  # noqa: E402
    ENCODINGS,
    HTJ2K_ENCODING,
    Encoding,
    encode,
    fixture_images,
    make_dataset,
    with_pixels,
    write,
)

from core.pixels import convert_dataset, convert_frame  # noqa: E402

MODEL_SIZE = 150


@dataclass
class Row:
    encoding: str
    transfer_syntax: str
    bits: int
    file_mb: float
    decode_ms: float
    conversion_ms: float
    node_path_ms: float

    @property
    def conversion_ratio(self) -> float:
        return self.conversion_ms / self.decode_ms

    @property
    def added_ratio(self) -> float:
        return (self.node_path_ms - self.decode_ms) / self.decode_ms


def radiograph(rows: int, columns: int, bits: int, seed: int = 0) -> np.ndarray:
    """A fixture chest radiograph at detector size, with detector-like noise and range."""
    with Image.open(fixture_images()[0]) as image:
        grey = image.convert("L").resize((columns, rows), Image.Resampling.BICUBIC)
    top = (1 << bits) - 1
    values = np.asarray(grey, dtype=np.float32) * (top / 255)
    values += np.random.default_rng(seed).normal(0, top / 400, values.shape)
    return np.clip(np.rint(values), 0, top).astype(np.uint16)


def source_file(directory: Path, rows: int, columns: int, bits: int) -> Path:
    values = radiograph(rows, columns, bits)
    ds = make_dataset(np.zeros((2, 2), np.uint8), modality="DX")
    with_pixels(ds, values if bits > 8 else values.astype(np.uint8), bits)
    return write(ds, directory / f"{bits}bit", "source.dcm")


def _plain(raw: bytes) -> tuple[float, float]:
    plain = dcmread(io.BytesIO(raw))
    start = time.perf_counter()
    decoded = plain.pixel_array
    decoded_at = time.perf_counter()
    convert_frame(decoded, plain, MODEL_SIZE)
    return (decoded_at - start) * 1000, (time.perf_counter() - decoded_at) * 1000


def _node(raw: bytes) -> float:
    fresh = dcmread(io.BytesIO(raw))
    start = time.perf_counter()
    convert_dataset(fresh, MODEL_SIZE)
    return (time.perf_counter() - start) * 1000


def measure(files: dict[tuple[str, int], tuple[Encoding, Path]], repeat: int) -> list[Row]:
    """Interleaved repetitions in rotating order; within each, the plain decode and the
    node path swap order every other time so that neither always runs on a warmer cache or
    allocator."""
    data = {key: path.read_bytes() for key, (_, path) in files.items()}
    times: dict[tuple[str, int], dict[str, list[float]]] = {
        key: {"decode": [], "conversion": [], "node": []} for key in files
    }
    for raw in data.values():  # warm-up round, not counted: imports, plugin discovery
        _plain(raw)
        _node(raw)
    gc.disable()
    try:
        keys = list(data)
        for repetition in range(repeat):
            # Each repetition starts one file further on, so that no file always follows
            # the same (perhaps memory-hungry) neighbour.
            shift = repetition % len(keys)
            for key in keys[shift:] + keys[:shift]:
                raw = data[key]
                gc.collect()
                if repetition % 2:
                    node = _node(raw)
                    decode, conversion = _plain(raw)
                else:
                    decode, conversion = _plain(raw)
                    node = _node(raw)
                times[key]["decode"].append(decode)
                times[key]["conversion"].append(conversion)
                times[key]["node"].append(node)
    finally:
        gc.enable()
    rows = []
    for (name, bits), (encoding, path) in files.items():
        measured = times[(name, bits)]
        rows.append(
            Row(
                encoding=name,
                transfer_syntax=str(encoding.transfer_syntax),
                bits=bits,
                file_mb=round(path.stat().st_size / 1e6, 2),
                decode_ms=statistics.median(measured["decode"]),
                conversion_ms=statistics.median(measured["conversion"]),
                node_path_ms=statistics.median(measured["node"]),
            )
        )
    return rows


def build(directory: Path, rows: int, columns: int, bit_depths: list[int]) -> dict:
    encodings = list(ENCODINGS.values())
    try:
        encode(source_file(directory / "probe", 8, 8, 12), HTJ2K_ENCODING, directory / "probe")
        encodings.append(HTJ2K_ENCODING)
    except (OSError, ValueError) as exc:
        print(f"HTJ2K left out: {exc}", file=sys.stderr)
    files = {}
    for bits in bit_depths:
        source = source_file(directory, rows, columns, bits)
        eight = source_file(directory / "8bit", rows, columns, 8)
        for encoding in encodings:
            if encoding.max_bits < bits and encoding.max_bits != 8:
                continue
            depth = 8 if encoding.max_bits == 8 else bits
            if (encoding.name, depth) in files:
                continue
            origin = eight if depth == 8 else source
            files[(encoding.name, depth)] = (
                encoding,
                encode(origin, encoding, directory / f"{depth}bit"),
            )
    return files


def print_table(rows: list[Row], repeat: int, shape: tuple[int, int]) -> None:
    print(
        f"{shape[0]} x {shape[1]} pixels, median of {repeat} interleaved runs, "
        f"model input {MODEL_SIZE} x {MODEL_SIZE}\n"
    )
    print(
        "| encoding | bits | file MB | decode ms (pixel_array) | conversion ms "
        "| conversion / decode | node path ms | added to decode |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.encoding} | {row.bits} | {row.file_mb:.2f} | {row.decode_ms:.2f} "
            f"| {row.conversion_ms:.2f} | {row.conversion_ratio:.0%} | {row.node_path_ms:.2f} "
            f"| {row.added_ratio:+.0%} |"
        )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory(path: Path) -> dict:
    """Peak memory of reading nothing more and converting one file, in this process.

    Two measures: tracemalloc's peak (Python and numpy allocations) and the growth of the
    peak resident set size (everything, C decoders included), with the high-water mark
    reset through clear_refs where the kernel allows it.
    """
    ds = dcmread(path)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = max(_status_kib("VmRSS"), _status_kib("VmHWM"))
    tracemalloc.start()
    convert_dataset(ds, MODEL_SIZE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = max(_status_kib("VmHWM") - before, 0) * 1024
    return {
        "tracemalloc_peak_mb": round(peak / 1e6, 1),
        "resident_peak_growth_mb": round(grown / 1e6, 1),
    }


def memory(directory: Path, encoding_names: list[str]) -> list[dict]:
    """Peak memory of converting a 4,300 x 3,500 16-bit radiograph, per encoding, each in a
    fresh process so that no earlier allocation hides or inflates the next."""
    rows, columns, bits = 4300, 3500, 16
    source = source_file(directory, rows, columns, bits)
    results = []
    for name in encoding_names:
        encoding = HTJ2K_ENCODING if name == HTJ2K_ENCODING.name else ENCODINGS[name]
        path = encode(source, encoding, directory / "memory")
        measured = subprocess.run(
            [sys.executable, __file__, "--peak-memory-of", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(
            {
                "encoding": name,
                "image_mb": round(rows * columns * 2 / 1e6, 1),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                **json.loads(measured.stdout),
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--bits", type=int, nargs="+", default=[12, 16])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--memory", action="store_true", help="measure peak memory at 4,300 x 3,500 instead"
    )
    parser.add_argument(
        "--encodings", nargs="+", default=["explicit-le", "rle", "jpeg-ls-lossless", "j2k-lossless"]
    )
    parser.add_argument("--peak-memory-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_memory_of:
        print(json.dumps(peak_memory(args.peak_memory_of)))
        return 0
    with tempfile.TemporaryDirectory(prefix="pneumotriage-bench-") as scratch:
        directory = Path(scratch)
        if args.memory:
            results = memory(directory, args.encodings)
            print(json.dumps(results, indent=2))
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            return 0
        files = build(directory, args.rows, args.columns, args.bits)
        rows = measure(files, args.repeat)
    print_table(rows, args.repeat, (args.rows, args.columns))
    if args.json:
        payload = [
            {**asdict(r), "conversion_ratio": r.conversion_ratio, "added_ratio": r.added_ratio}
            for r in rows
        ]
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

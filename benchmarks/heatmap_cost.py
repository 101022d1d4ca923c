"""What a heatmap adds to triage, as ratios measured in one run on this machine.

Two ratios, each of medians over interleaved repetitions on batches of `[worker]
batch_size` images, so that the shared machine's slow and fast spells fall on both sides:

* model: `core.heatmap.HeatmapModel.explain` (probabilities and maps in one pass) against
  `LoadedModel.predict` (probabilities alone), on converted fixture radiographs;
* worker: per image, what the triage worker spends on a realistic detector image (a
  2,000 x 2,500, 16-bit DICOM read and converted through core.intake, inference, the
  thumbnail), against the same with the heatmap pass and the map's PNG, as
  `worker.pipeline.TriageWorker._infer` stores it, instead of inference alone (overlays
  are drawn later, where a report or a Secondary Capture shows them). Claiming, database
  writes and storage are left out on both sides, which makes this ratio an upper bound on
  what heatmaps cost the worker's throughput.

The exit status is 1 when the worker ratio reaches 2, i.e. heatmaps would halve throughput.

    .venv/bin/python benchmarks/heatmap_cost.py [--repeats 9] [--model NAME|PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicom_factory import fixture_images, make_dataset, with_pixels, write  # noqa: E402

from core.config import DEFAULT_CONFIG, Config, load_config  # noqa: E402
from core.heatmap import HeatmapModel, heatmap_model  # noqa: E402
from core.heatmap_render import map_png  # noqa: E402
from core.intake import read_model_input  # noqa: E402
from core.model_store import LoadedModel, load_model  # noqa: E402
from core.pixels import convert_file  # noqa: E402
from training.machine import describe  # noqa: E402
from worker.thumbnail import png_thumbnail  # noqa: E402

# Issue "Results where radiologists work": heatmaps must not halve the worker's throughput.
MAX_WORKER_RATIO = 2.0


def detector_file(directory: Path, rows: int, columns: int) -> Path:
    """A fixture radiograph enlarged to detector size and stored at 16 bits, as a DX
    modality sends it, with noise so that no block of it is flat."""
    with Image.open(fixture_images()[0]) as image:
        grey = image.convert("L").resize((columns, rows), Image.Resampling.BICUBIC)
    values = np.asarray(grey, dtype=np.float32) * (65535 / 255)
    values += np.random.default_rng(0).normal(0, 160, values.shape)
    ds = make_dataset(np.zeros((2, 2), np.uint8), modality="DX")
    with_pixels(ds, np.clip(np.rint(values), 0, 65535).astype(np.uint16), 16)
    return write(ds, directory, "detector.dcm")


def _seconds(task: Callable[[], object]) -> float:
    started = time.perf_counter()
    task()
    return time.perf_counter() - started


def interleaved(
    plain: Callable[[], object], with_heatmap: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """One warm-up of each (tracing, caches), then repetitions that swap which side runs
    first, so that neither always finds a warmer cache."""
    plain()
    with_heatmap()
    plains, heatmaps = [], []
    for repeat in range(repeats):
        if repeat % 2:
            heatmaps.append(_seconds(with_heatmap))
            plains.append(_seconds(plain))
        else:
            plains.append(_seconds(plain))
            heatmaps.append(_seconds(with_heatmap))
    return plains, heatmaps


def worker_tasks(
    model: LoadedModel,
    heatmaps: HeatmapModel,
    files: list[Path],
    config: Config,
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The worker's per-batch work without and with heatmaps (see the module docstring)."""
    size = model.card.input_size
    thumbnail_pixels = config.worker.thumbnail_pixels

    def convert() -> np.ndarray:
        return np.stack([read_model_input(f, config.selection, size).pixels for f in files])

    def plain() -> None:
        pixels = convert()
        model.predict(pixels)
        for image in pixels:
            png_thumbnail(image, thumbnail_pixels)

    def with_heatmap() -> None:
        pixels = convert()
        explained = heatmaps.explain(pixels)
        for image, heatmap in zip(pixels, explained.maps, strict=True):
            png_thumbnail(image, thumbnail_pixels)
            map_png(heatmap)

    return plain, with_heatmap


def _line(what: str, plains: list[float], heatmaps: list[float], images: int) -> str:
    plain, heatmap = statistics.median(plains), statistics.median(heatmaps)
    ratios = [h / p for h, p in zip(heatmaps, plains, strict=True)]
    return (
        f"| {what} | {plain / images * 1000:.1f} | {heatmap / images * 1000:.1f}"
        f" | {heatmap / plain:.2f} | {statistics.median(ratios):.2f} |"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--model", help="name or folder (default: model.name)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, help="(default: worker.batch_size)")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    config = load_config(args.config if args.config.is_file() else None)
    batch = args.batch_size or config.worker.batch_size
    model = load_model(config.model.directory, args.model or config.model.name)
    heatmaps = heatmap_model(model)
    if heatmaps is None:
        print(f"{model.card.name} has no heatmap: nothing to measure", file=sys.stderr)
        return 2
    size = model.card.input_size
    converted = [convert_file(path, size).pixels for path in fixture_images()]
    pixels = np.stack([converted[i % len(converted)] for i in range(batch)])

    model_times = interleaved(
        lambda: model.predict(pixels), lambda: heatmaps.explain(pixels), args.repeats
    )
    with tempfile.TemporaryDirectory() as directory:
        files = [detector_file(Path(directory), args.rows, args.columns)] * batch
        plain, with_heatmap = worker_tasks(model, heatmaps, files, config)
        worker_times = interleaved(plain, with_heatmap, args.repeats)

    print(f"- command: `{shlex.join(['python', 'benchmarks/heatmap_cost.py', *argv])}`")
    print(f"- machine: {describe()}")
    print(
        f"- model {model.card.name} ({model.card.version}); batches of {batch};"
        f" {args.repeats} interleaved repetitions; detector image {args.columns} x"
        f" {args.rows}, 16 bits; thumbnail {config.worker.thumbnail_pixels} px\n"
    )
    print(
        "| per image | without heatmap, ms | with heatmap, ms | ratio of medians"
        " | median of paired ratios |"
    )
    print("|---|---:|---:|---:|---:|")
    print(_line("model: predict vs explain", *model_times, batch))
    print(_line("worker: convert + model + PNGs", *worker_times, batch))
    worker_ratio = statistics.median(worker_times[1]) / statistics.median(worker_times[0])
    return 1 if worker_ratio >= MAX_WORKER_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())

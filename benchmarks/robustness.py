"""How steady are models when radiographs look different from the training images?

The withheld test split is known to be harder than a validation split drawn from the
training images. This stress test alters each validation image of a model's own split the
way images from another department differ: a different aspect ratio of the original film
(padding or cropping the width before the square resize), zoom, exposure curve (gamma),
sharpness, JPEG compression and histogram equalisation. Each altered image then goes through
the service's conversion and model, and the table gives AUC / sensitivity / specificity at
each model's own threshold and the expected calibration error of its (calibrated) scores. A
model that leans on a shortcut (anatomy width, contrast) shows it here as a collapse of one
column; one whose scores stop meaning what they say, as a rise of the ECE. None of these
alterations is the training augmentation the calibration was fitted with.

    .venv/bin/python benchmarks/robustness.py seed-rnn cnn-lstm-ensemble --markdown FILE \
        --reliability docs/figures/reliability-under-alterations.png
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageFilter, ImageOps
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from core.config import load_config
from core.model_store import load_model, model_dir
from core.pixels import convert_picture
from training.metrics import CALIBRATION_BINS, expected_calibration_error
from training.split import SPLIT_FILE, read_split

Alteration = Callable[[Image.Image], Image.Image]


def _pad_width(fraction: float) -> Alteration:
    def alter(image: Image.Image) -> Image.Image:
        width, height = image.size
        canvas = Image.new("L", (int(width * (1 + fraction)), height), 0)
        canvas.paste(image, ((canvas.size[0] - width) // 2, 0))
        return canvas

    return alter


def _crop(fraction_x: float, fraction_y: float) -> Alteration:
    def alter(image: Image.Image) -> Image.Image:
        width, height = image.size
        dx, dy = int(width * fraction_x / 2), int(height * fraction_y / 2)
        return image.crop((dx, dy, width - dx, height - dy))

    return alter


def _gamma(gamma: float) -> Alteration:
    table = [round(255 * (v / 255) ** gamma) for v in range(256)]
    return lambda image: image.point(table)


def _jpeg(quality: int) -> Alteration:
    def alter(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer)

    return alter


ALTERATIONS: dict[str, Alteration] = {
    "none": lambda image: image,
    "pad width 25%": _pad_width(0.25),
    "crop width 20%": _crop(0.2, 0.0),
    "zoom 15%": _crop(0.15, 0.15),
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "blur 1.5 px": lambda image: image.filter(ImageFilter.GaussianBlur(1.5)),
    "sharpen": lambda image: image.filter(ImageFilter.UnsharpMask(2, 150, 2)),
    "JPEG q15": _jpeg(15),
    "equalise": ImageOps.equalize,
}


def altered_inputs(files: list[Path], size: int) -> dict[str, np.ndarray]:
    sources = []
    for path in files:
        with Image.open(path) as image:
            sources.append(image.convert("L"))
    inputs = {}
    for name, alter in ALTERATIONS.items():
        converted = []
        for source in sources:
            buffer = io.BytesIO()
            alter(source).convert("L").save(buffer, "PNG")
            buffer.seek(0)
            converted.append(convert_picture(buffer, size).pixels)
        inputs[name] = np.stack(converted)
    return inputs


def _reliability(path: Path, labels: np.ndarray, scores: dict[str, dict[str, np.ndarray]]) -> None:
    """Per model: observed pneumonia rate against mean score in the ECE's bins, a line per
    alteration, and below it how many images fall in each bin. Most images sit at the two
    ends, so a middle bin's wild swing rests on a handful of images, and the counts say so."""
    figure = Figure(figsize=(4.5 * len(scores), 6.5))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, len(scores), height_ratios=(3, 1))
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    for column, (name, by_alteration) in enumerate(scores.items()):
        ax = figure.add_subplot(grid[0, column])
        counts = figure.add_subplot(grid[1, column], sharex=ax)
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
        for alteration, values in by_alteration.items():
            observed, predicted = calibration_curve(
                labels, values, n_bins=CALIBRATION_BINS, strategy="uniform"
            )
            style = {"color": "black", "linewidth": 2} if alteration == "none" else {"alpha": 0.6}
            line = ax.plot(predicted, observed, marker=".", label=alteration, **style)[0]
            counts.stairs(np.histogram(values, edges)[0], edges, color=line.get_color())
        ax.set_title(name)
        ax.set_ylabel("observed pneumonia rate")
        counts.set_yscale("log")
        counts.set_xlabel("score (bins of the ECE)")
        counts.set_ylabel("images")
    figure.axes[0].legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def models_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that scores models on their validation images."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("models", nargs="+", help="model names or folders")
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument("--data", type=Path, help="the training data folder")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    return parser


def main() -> None:
    parser = models_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--reliability", type=Path, help="write reliability diagrams (PNG)")
    parser.add_argument(
        "--counts",
        action="store_true",
        help="add a table of true negatives / true positives per cell: a specificity to two"
        " places cannot tell whether a difference is one image or five",
    )
    args = parser.parse_args()
    config = load_config(args.config)
    data = args.data or config.training.data_directory
    first = model_dir(config.model.directory, args.models[0])
    samples = read_split(first / SPLIT_FILE, data, "validation")
    labels = np.array([s.label for s in samples])
    cache: dict[int, dict[str, np.ndarray]] = {}
    everything: dict[str, dict[str, np.ndarray]] = {}
    head = ["| model | " + " | ".join(ALTERATIONS) + " |", "|---" * (len(ALTERATIONS) + 1) + "|"]
    lines = [
        f"### Robustness to altered images, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python benchmarks/robustness.py {shlex.join(sys.argv[1:])}`",
        f"- images: the {len(samples)} validation images of `{first.name}`'s split, altered,"
        " then converted as the service converts them",
        "- cells: AUC / sensitivity / specificity at each model's own threshold / ECE"
        f" ({CALIBRATION_BINS} equal-width bins)",
        "",
        *head,
    ]
    counts = [
        "",
        f"True negatives of {int((labels == 0).sum())} normals / true positives of"
        f" {int((labels == 1).sum())} pneumonias at each model's own threshold:",
        "",
        *head,
    ]
    for name in args.models:
        if (model_dir(config.model.directory, name) / SPLIT_FILE).read_bytes() != (
            first / SPLIT_FILE
        ).read_bytes():
            raise SystemExit(f"{name} was validated on other patients than {first.name}")
        model = load_model(config.model.directory, name)
        size = model.card.input_size
        inputs = cache.setdefault(size, altered_inputs([s.path for s in samples], size))
        cells = []
        confusion = []
        everything[model.card.name] = {}
        for alteration in ALTERATIONS:
            scores = model.predict(inputs[alteration])
            everything[model.card.name][alteration] = scores
            flagged = scores >= model.card.threshold
            sensitivity = flagged[labels == 1].mean()
            specificity = (~flagged[labels == 0]).mean()
            cells.append(
                f"{roc_auc_score(labels, scores):.3f} / {sensitivity:.2f} / {specificity:.2f}"
                f" / {expected_calibration_error(labels, scores):.3f}"
            )
            confusion.append(f"{(~flagged[labels == 0]).sum()} / {flagged[labels == 1].sum()}")
        lines.append(f"| {model.card.name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        counts.append(f"| {model.card.name} | " + " | ".join(confusion) + " |")
    if args.counts:
        lines += counts
        print("\n".join(counts), flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.reliability:
        _reliability(args.reliability, labels, everything)


if __name__ == "__main__":
    main()

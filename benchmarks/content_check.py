"""How well the content check tells frontal chest radiographs from everything else.

The check (core/content_check.py) is fitted on a model folder's training images and its
limits on the validation images (`pneumotriage content-check`). This measures it on what
no one fitted it on:

* the validation radiographs themselves (at least 99.5% must pass), and left-right
  mirrored (a plausible film: situs inversus, or a mirrored export; reported, no goal);
* the validation radiographs upside down;
* every image among pydicom's bundled test files that the service can convert (CT, MR,
  ultrasound, RT, secondary captures and other samples);
* scikit-image's bundled sample pictures (photographs, microscopy, text, textures);
* screenshots of the product's own pages (docs/screenshots/) and figures (docs/figures/);
* blank, white, uniform and Gaussian noise, a ramp, and saturated images.

Goal: at least 95% of all the images that are not chest radiographs refused, with at most
0.5% of the validation radiographs refused. Exit status 1 when either is missed.

    .venv/bin/python benchmarks/content_check.py [--model cnn-lstm-ensemble] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom.data
import skimage
from rich.console import Console
from rich.table import Table

from core.config import load_config
from core.content_check import load
from core.model_store import model_dir, read_card
from core.pixels import ConversionError, convert_file
from training.data import load_images
from training.split import SPLIT_FILE, read_split

ROOT = Path(__file__).resolve().parent.parent
GOAL_REFUSED = 0.95
GOAL_PASSED = 0.995


def _converted(paths: list[Path], size: int) -> np.ndarray:
    """What the service would score; files it cannot convert never reach the check."""
    images = []
    for path in paths:
        try:
            images.append(convert_file(path, size).pixels)
        except ConversionError:
            continue
    return np.stack(images) if images else np.zeros((0, size, size))


def synthetic(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    half = np.zeros((size, size))
    half[:, size // 2 :] = 1
    return np.stack(
        [
            np.zeros((size, size)),
            np.ones((size, size)),
            rng.random((size, size)),
            np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1),
            np.tile(np.linspace(0, 1, size), (size, 1)),
            half,
            np.clip(rng.normal(0.9, 0.2, (size, size)), 0, 1),
        ]
    )


def sample_sets(size: int) -> dict[str, np.ndarray]:
    """The images that are not chest radiographs, by kind (none needs ../shared)."""
    pydicom_files = sorted(Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent.glob("*"))
    pictures = Path(skimage.data.__file__).parent
    return {
        "pydicom test files (CT, MR, US, ...)": _converted(
            [p for p in pydicom_files if p.suffix.lower() == ".dcm"], size
        ),
        "scikit-image sample pictures": _converted(
            sorted(p for p in pictures.iterdir() if p.suffix.lower() in {".png", ".jpg", ".gif"}),
            size,
        ),
        "screenshots and figures of the product": _converted(
            sorted((ROOT / "docs" / "screenshots").glob("*.png"))
            + sorted((ROOT / "docs" / "figures").glob("*.png")),
            size,
        ),
        "blank, noise, ramp, saturated": synthetic(size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    config = load_config(ROOT / "config.toml")
    folder = model_dir(config.model.directory, args.model or config.model.name)
    card = read_card(folder)
    if not card.content_check:
        print(f"{folder.name} has no content check: run `pneumotriage content-check`")
        return 2
    check = load(folder, card.content_check)
    data = config.training.data_directory
    validation = load_images(read_split(folder / SPLIT_FILE, data, "validation"), card.input_size)

    def refused(images: np.ndarray) -> np.ndarray:
        return np.array([check.refusal(image) is not None for image in images], dtype=bool)

    radiographs = refused(validation.pixels)
    mirrored = refused(validation.pixels[:, :, ::-1])
    # Why the check has an orientation model: the distance alone, on the same films.
    by_distance = check.scores(validation.pixels[:, ::-1, :]) > check.limit
    others = {"validation radiographs upside down": validation.pixels[:, ::-1, :]}
    others |= sample_sets(card.input_size)
    outcome = {name: refused(images) for name, images in others.items()}
    every = np.concatenate(list(outcome.values()))

    table = Table(title=f"content check of {folder.name}")
    for column in ("images", "n", "refused"):
        table.add_column(column, justify="right" if column != "images" else "left")
    rows = [("validation radiographs (must pass)", radiographs)]
    rows += [("validation radiographs mirrored left-right (no goal)", mirrored)]
    rows += [*outcome.items(), ("all that are not chest radiographs", every)]
    rows += [("upside down, by the distance alone (no goal)", by_distance)]
    for name, flags in rows:
        table.add_row(name, str(len(flags)), f"{flags.mean():.1%}")
    Console().print(table)
    passed_ok = 1 - radiographs.mean() >= GOAL_PASSED
    refused_ok = every.mean() >= GOAL_REFUSED
    verdict = (
        f"validation radiographs passed {1 - radiographs.mean():.1%} (goal >= 99.5%):"
        f" {'met' if passed_ok else 'MISSED'}; not chest radiographs refused"
        f" {every.mean():.1%} (goal >= 95%): {'met' if refused_ok else 'MISSED'}"
    )
    print(verdict)
    if args.markdown:
        command = shlex.join([".venv/bin/python", "benchmarks/content_check.py", *sys.argv[1:]])
        lines = [
            f"# Content check of `{folder.name}`",
            "",
            "Produced by:",
            "",
            f"```sh\n{command}\n```",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; limits {check.limit:.1f}"
            f" (distance) and {check.orientation_limit:.4f} (upright), from the card.",
            "",
            "| images | n | refused |",
            "| --- | ---: | ---: |",
            *(f"| {name} | {len(flags)} | {flags.mean():.1%} |" for name, flags in rows),
            "",
            verdict,
            "",
        ]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
    return 0 if passed_ok and refused_ok else 1


if __name__ == "__main__":
    sys.exit(main())

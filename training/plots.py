"""PNG figures of an evaluation: training curves, confusion matrix, ROC and calibration.

Each figure is its own `Figure` on an Agg canvas, never pyplot's global state, so plotting
works on a headless server whatever backend pyplot would pick, and figures are freed when
the function returns instead of piling up in pyplot's registry.
"""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from training.data import CLASSES
from training.evaluation import Evaluation
from training.metrics import CALIBRATION_BINS

DPI = 120
CURVES = (("loss", "loss"), ("accuracy", "accuracy"), ("auc", "ROC AUC"))


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def training_curves(history_csv: Path, path: Path) -> Path:
    """Training against validation per epoch, from the history.csv written by training."""
    with history_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(row["epoch"]) + 1 for row in rows]
    present = [(key, title) for key, title in CURVES if rows and key in rows[0]]
    figure = _figure(4 * max(1, len(present)), 3.5)
    for ax, (key, title) in zip(
        figure.subplots(1, len(present), squeeze=False)[0], present, strict=True
    ):
        for prefix, name in (("", "training"), ("val_", "validation")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(row[prefix + key]) for row in rows], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return _save(figure, path)


def confusion_matrix(evaluation: Evaluation, path: Path) -> Path:
    predicted = (evaluation.probabilities >= evaluation.card.threshold).astype(int)
    figure = _figure(4.5, 4)
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        evaluation.labels, predicted, labels=[0, 1], display_labels=CLASSES, ax=ax, cmap="Blues"
    )
    ax.set_title(f"threshold {evaluation.card.threshold:.3f}")
    return _save(figure, path)


def roc_curve(evaluation: Evaluation, path: Path) -> Path:
    """The ROC curve with the card's operating point marked, so the chosen trade-off shows."""
    figure = _figure(4.5, 4.5)
    ax = figure.subplots()
    display = RocCurveDisplay.from_predictions(
        evaluation.labels,
        evaluation.probabilities,
        pos_label=1,
        name=evaluation.card.name,
        ax=ax,
        plot_chance_level=True,
    )
    # scikit-learn rounds the AUC to two decimals, which shows 0.9965 as 1.00.
    display.line_.set_label(f"{evaluation.card.name} (AUC = {evaluation.figures['auc']:.4f})")
    sensitivity = evaluation.figures["sensitivity"]
    specificity = evaluation.figures["specificity"]
    ax.plot(1 - specificity, sensitivity, "o", color="black", label="operating point")
    ax.set_xlabel("1 - specificity (PNEUMONIA positive)")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    return _save(figure, path)


def calibration(evaluation: Evaluation, path: Path) -> Path:
    """Observed pneumonia rate per probability bin, the bins used for the reported ECE."""
    figure = _figure(4.5, 4.5)
    ax = figure.subplots()
    CalibrationDisplay.from_predictions(
        evaluation.labels,
        evaluation.probabilities,
        n_bins=CALIBRATION_BINS,
        strategy="uniform",
        pos_label=1,
        name=evaluation.card.name,
        ax=ax,
    )
    ax.set_title(f"ECE {evaluation.figures['ece']:.3f}")
    return _save(figure, path)


def write_plots(out: Path, evaluation: Evaluation, history_csv: Path | None) -> list[Path]:
    """Every figure that the data allows: ROC and calibration need both classes."""
    out.mkdir(parents=True, exist_ok=True)
    written = [confusion_matrix(evaluation, out / "confusion_matrix.png")]
    if history_csv is not None and history_csv.is_file():
        written.insert(0, training_curves(history_csv, out / "training_curves.png"))
    if evaluation.figures["auc"] is not None:
        written.append(roc_curve(evaluation, out / "roc_curve.png"))
        written.append(calibration(evaluation, out / "calibration.png"))
    return written

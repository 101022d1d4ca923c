"""`pneumotriage compare`: every architecture with and without SMOTE, in one Markdown table.

Each cell is an ordinary training run (training.train.train) into a scratch folder, scored on
its own patient-level validation split. The table's figures are the ones written in each
run's card, so any row can be checked by opening the card it came from, and the header
carries the date, the exact command, the machine and the training settings taken from
`[training]` (augmentation, mixup, label smoothing; compare has no options for them) so the
table can be quoted in the docs.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras

from core.model_store import ModelCard
from training.balance import Balance
from training.machine import describe
from training.markdown import table
from training.train import TrainRequest, train

log = logging.getLogger(__name__)

COLUMNS = (
    "architecture",
    "balance",
    "epochs run",
    "training s",
    "s/epoch",
    "device",
    "val. accuracy",
    "AUC",
    "sensitivity",
    "specificity",
    "F1 macro",
    "ECE",
    "threshold",
)
SMOTE_EFFECT = (("auc", "AUC"), ("specificity", "specificity"), ("f1_macro", "F1 macro"))


@dataclass(frozen=True)
class CompareRequest:
    data: Path
    architectures: tuple[str, ...]
    balances: tuple[Balance, ...]
    workdir: Path
    seed: int
    validation_fraction: float
    target_sensitivity: float
    input_size: int
    command: str
    calibration_copies: int
    augmentation_name: str
    augmentation: dict[str, float]
    mixup: float
    label_smoothing: float
    labels_csv: Path | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class Run:
    architecture: str
    balance: Balance
    card: ModelCard

    def figure(self, key: str) -> float | None:
        validation = self.card.validation
        return validation["macro_avg"]["f1"] if key == "f1_macro" else validation[key]


def run_all(request: CompareRequest) -> list[Run]:
    """Train every architecture with every balancing method, same data, split and seed."""
    runs = []
    for architecture in request.architectures:
        for method in request.balances:
            folder = request.workdir / f"{architecture}-{method.value}"
            log.info(
                "comparison run %d: %s with %s -> %s", len(runs) + 1, architecture, method, folder
            )
            card = train(
                TrainRequest(
                    data=request.data,
                    labels_csv=request.labels_csv,
                    architecture=architecture,
                    balance=method,
                    output=folder,
                    seed=request.seed,
                    validation_fraction=request.validation_fraction,
                    target_sensitivity=request.target_sensitivity,
                    input_size=request.input_size,
                    command=request.command,
                    calibration_copies=request.calibration_copies,
                    epochs=request.epochs,
                    augmentation_name=request.augmentation_name,
                    augmentation=request.augmentation,
                    mixup=request.mixup,
                    label_smoothing=request.label_smoothing,
                )
            )
            runs.append(Run(architecture, method, card))
            keras.backend.clear_session()
    return runs


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def seconds_per_epoch(epoch_seconds: Sequence[float]) -> float | None:
    """Median epoch time without the first epoch, which also pays for compiling the graph;
    the first is all there is after a one-epoch run."""
    if not epoch_seconds:
        return None
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def _row(run: Run) -> list[str]:
    training = run.card.training
    return [
        run.architecture,
        run.balance.value,
        str(training["epochs_run"]),
        _number(training["seconds"], 1),
        _number(seconds_per_epoch(training.get("epoch_seconds", [])), 1),
        training["device"],
        _number(run.figure("accuracy")),
        _number(run.figure("auc")),
        _number(run.figure("sensitivity")),
        _number(run.figure("specificity")),
        _number(run.figure("f1_macro")),
        _number(run.figure("ece")),
        _number(run.card.threshold),
    ]


def _smote_effect(runs: Sequence[Run]) -> str:
    """SMOTE minus no balancing per architecture: the question the research asked."""
    by_cell = {(r.architecture, r.balance): r for r in runs}
    rows = []
    for architecture in dict.fromkeys(r.architecture for r in runs):
        smote = by_cell.get((architecture, Balance.SMOTE))
        plain = by_cell.get((architecture, Balance.NONE))
        if smote is None or plain is None:
            continue
        deltas = []
        for key, _ in SMOTE_EFFECT:
            a, b = smote.figure(key), plain.figure(key)
            deltas.append("n/a" if a is None or b is None else f"{a - b:+.3f}")
        rows.append([architecture, *deltas])
    if not rows:
        return ""
    headers = ["architecture", *(f"{name}, SMOTE minus none" for _, name in SMOTE_EFFECT)]
    return "\n" + table(headers, rows)


def comparison_markdown(request: CompareRequest, runs: Sequence[Run], when: datetime) -> str:
    first = runs[0].card.training
    header = [
        f"### Architecture comparison, {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{request.command}`",
        f"- machine: {describe()}",
        f"- data: `{request.data}`, {first['images']} images; validation part"
        f" {first['validation_images']} images of {first['validation_patients']} patients"
        f" (patient-level split, fraction {request.validation_fraction}, seed {request.seed})",
        f"- training: augmentation `{request.augmentation_name}` (for the architectures that"
        f" augment), mixup {request.mixup},"
        f" label smoothing {request.label_smoothing}",
        f"- threshold: {runs[0].card.threshold_rule}; sensitivity therefore sits at the target"
        " by construction, so compare AUC, specificity, F1 and ECE",
        "- one training run per cell with one seed; no spread between seeds was measured",
        "- s/epoch: median wall time of an epoch (training and validation) after the first",
    ]
    body = table(COLUMNS, [_row(r) for r in runs])
    return "\n".join(header) + "\n\n" + body + _smote_effect(runs)

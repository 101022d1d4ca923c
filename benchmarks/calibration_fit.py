"""Which calibration, fitted on which data?

For each model it takes the raw scores (before the card's calibration) of its validation
images, of copies of them under the training augmentation, and of the stress test's
alterations (`benchmarks/robustness.py`, none of which is the training augmentation), then
fits Platt scaling (a logistic regression on the log-odds) and beta calibration (the
shipped method, training.calibration.fit_beta), each on the validation images alone and on
them with the augmented copies, and prints the expected calibration error of each under
every alteration, beside the raw scores'. This is the evidence for training.calibration's
choices.

    .venv/bin/python benchmarks/calibration_fit.py cnn-lstm-ensemble seed-rnn --markdown FILE
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from robustness import ALTERATIONS, altered_inputs, models_parser  # noqa: E402
from run_facts import machine, revision  # noqa: E402

from core.calibration import Calibration, log_terms  # noqa: E402
from core.config import load_config  # noqa: E402
from core.model_store import LoadedModel, load_model, model_dir, positive_probabilities  # noqa: E402
from training.calibration import augmentation_of, augmented, fit_beta  # noqa: E402
from training.metrics import CALIBRATION_BINS, expected_calibration_error  # noqa: E402
from training.split import SPLIT_FILE, read_split  # noqa: E402


def log_odds(raw: np.ndarray) -> np.ndarray:
    log_p, log_q = log_terms(raw)
    return log_p + log_q


def _platt(labels: np.ndarray, raw: np.ndarray) -> Calibration:
    """Platt scaling is beta calibration with a = b: one weight on the log-odds."""
    regression = LogisticRegression(C=1e6).fit(log_odds(raw)[:, None], labels)
    weight = float(regression.coef_[0, 0])
    return Calibration(weight, weight, float(regression.intercept_[0]))


def _raw(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """The scores before the card's calibration, which this compares fits against."""
    return positive_probabilities(model.keras_model, pixels, model.card.positive_index)


def main() -> None:
    args = models_parser(__doc__.split("\n\n")[0]).parse_args()
    config = load_config(args.config)
    data = args.data or config.training.data_directory
    copies = config.training.calibration_copies
    # A model trained without augmentation is tried with copies under the configured one.
    configured = config.training.augmentations[config.training.augmentation].model_dump()
    first = model_dir(config.model.directory, args.models[0])
    samples = read_split(first / SPLIT_FILE, data, "validation")
    labels = np.array([s.label for s in samples])
    columns = list(ALTERATIONS)
    lines = [
        f"### Calibration data, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python benchmarks/calibration_fit.py {' '.join(args.models)}`",
        f"- {revision()}; {machine()}",
        f"- images: the {len(samples)} validation images of `{first.name}`'s split; the fit"
        f" with copies adds {copies} copies under the training augmentation",
        f"- cells: ECE ({CALIBRATION_BINS} equal-width bins) under each alteration of"
        " `benchmarks/robustness.py`",
        "",
        "| model | scores | " + " | ".join(columns) + " | worst |",
        "|---" * (len(columns) + 3) + "|",
    ]
    inputs: dict[int, dict[str, np.ndarray]] = {}
    for name in args.models:
        model = load_model(config.model.directory, name)
        size = model.card.input_size
        pictures = inputs.setdefault(size, altered_inputs([s.path for s in samples], size))

        scores = {alteration: _raw(model, pictures[alteration]) for alteration in columns}
        strengths = augmentation_of(model.card) or configured
        copied = [_raw(model, augmented(pictures["none"], k, strengths)) for k in range(copies)]
        both = np.concatenate([scores["none"], *copied])
        tiled = np.tile(labels, 1 + copies)
        fits = {"raw": Calibration()}
        for method, fit in (("Platt", _platt), ("beta", fit_beta)):
            fits[f"{method}, validation"] = fit(labels, scores["none"])
            fits[f"{method}, validation + {copies} augmented copies"] = fit(tiled, both)
        for label, calibration in fits.items():
            errors = [
                expected_calibration_error(labels, calibration.apply(scores[a])) for a in columns
            ]
            cells = " | ".join(f"{e:.3f}" for e in errors)
            lines.append(f"| {model.card.name} | {label} | {cells} | {max(errors):.3f} |")
            print(lines[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

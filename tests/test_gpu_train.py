"""scripts/gpu_train.sh, run here on the fixture images under TensorFlow: the same script
that trains side by side on a lent GPU must bring back what it trained, and what it had to
stop, reported, within its deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from conftest import ROOT

from core.config import load_config
from pneumotriage.cli import build_parser

SCRIPT = ROOT / "scripts" / "gpu_train.sh"
FIXTURES = ROOT / "tests" / "data" / "images"


def _run(tmp_path: Path, plan: str, deadline: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "plan.txt").write_text(plan, encoding="utf-8")
    out = tmp_path / "out"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOTRIAGE_")}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "plan.txt"), str(FIXTURES), str(deadline), str(out)],
        env=environment
        | {
            "PYTHON": sys.executable,
            "WORK": str(tmp_path / "work"),
            "KERAS_BACKEND": "tensorflow",
            # Half of the nine fixture patients validate; 48 px keeps the run to seconds.
            "PNEUMOTRIAGE_TRAINING_INPUT_SIZE": "48",
            "PNEUMOTRIAGE_TRAINING_VALIDATION_FRACTION": "0.5",
            "PNEUMOTRIAGE_TRAINING_SEED": "0",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, out


def test_finished_runs_come_back_packed_and_one_past_the_deadline_is_stopped(
    tmp_path: Path,
) -> None:
    """Written on Windows (CR LF) and with no newline after the last line, as plans by hand
    often are."""
    plan = (
        "# a comment line\r\n\r\n"
        "fixture-rnn --architecture seed-rnn --balance smote --epochs 1\r\n"
        # Weight averaging runs without early stopping: this one would train for an hour.
        "slow-rnn --architecture seed-rnn --balance smote --epochs 5000 --average-from-epoch 4999"
    )
    result, out = _run(tmp_path, plan, deadline=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fixture-rnn: exit 0" in result.stdout
    assert "slow-rnn: stopped at the deadline" in result.stdout
    with tarfile.open(out / "models-1.tar") as models:
        names = set(models.getnames())
    assert {"fixture-rnn/model.keras", "fixture-rnn/card.json", "fixture-rnn/split.csv"} <= names
    assert not any(name.startswith("slow-rnn") for name in names)
    scores = np.load(out / "jax-validation-scores.npz")
    assert len(scores["fixture-rnn"]) == 6 and "slow-rnn" not in scores
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert {"./fixture-rnn.log", "./slow-rnn.log"} <= set(logs.getnames())


def test_an_earlier_calls_folder_or_a_plan_it_cannot_bring_back_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """A warm machine keeps an earlier call's exit codes, which must not count as this
    call's."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "slow-rnn.rc").write_text("0\n", encoding="utf-8")
    result, _ = _run(tmp_path, "slow-rnn --architecture seed-rnn --epochs 500\n", deadline=60)
    assert result.returncode == 2
    assert "holds an earlier call's files" in result.stderr
    result, _ = _run(tmp_path, "# nothing to train\n", deadline=60)
    assert result.returncode == 2
    assert "has 0 runs; give 1 to 18" in result.stderr
    # More than the eight files the device brings back would hold.
    many = "".join(f"run-{i} --architecture seed-rnn\n" for i in range(19))
    result, _ = _run(tmp_path, many, deadline=60)
    assert result.returncode == 2
    assert "has 19 runs; give 1 to 18" in result.stderr
    # A name becomes a folder, files and a tar member.
    for plan, problem in (
        ("-x --architecture seed-rnn\n", "must start with a letter or digit"),
        ("a.rc --epochs 1\n", "not end in .rc or .log"),
        ("a --epochs 1\na --epochs 2\n", "run name 'a' is used twice"),
    ):
        result, _ = _run(tmp_path, plan, deadline=60)
        assert result.returncode == 2
        assert problem in result.stderr


def test_every_shipped_plan_passes_trains_preflight(tmp_path: Path) -> None:
    """A plan is written for a GPU call that comes rarely and costs minutes to start: a run
    naming an augmentation table or architecture that does not exist would only fail there.
    Each line is parsed as the script runs it and put through `train`'s preflight here."""
    plans = sorted((ROOT / "scripts" / "gpu-plans").glob("*.txt"))
    assert plans
    config = load_config(ROOT / "config.toml", environ={})
    for plan in plans:
        runs = [
            line.split()
            for line in plan.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert runs, plan.name
        for name, *arguments in runs:
            args = build_parser().parse_args(
                ["train", "--data", str(FIXTURES), "--out", str(tmp_path / name), *arguments]
            )
            args.preflight(args, config)
            assert args.name in (None, name), f"{plan.name}: {name} is named {args.name}"

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


def test_finished_runs_come_back_packed_with_their_scores_and_logs(tmp_path: Path) -> None:
    # No newline after the last line: a plan written by hand often has none.
    plan = "# a comment line\n\nfixture-rnn --architecture seed-rnn --balance smote --epochs 1"
    result, out = _run(tmp_path, plan, deadline=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fixture-rnn: exit 0" in result.stdout
    with tarfile.open(out / "models-1.tar") as models:
        names = set(models.getnames())
    assert {"fixture-rnn/model.keras", "fixture-rnn/card.json", "fixture-rnn/split.csv"} <= names
    scores = np.load(out / "jax-validation-scores.npz")
    assert len(scores["fixture-rnn"]) == 6
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert "./fixture-rnn.log" in logs.getnames()


def test_a_run_still_going_at_the_deadline_is_stopped_and_reported(tmp_path: Path) -> None:
    plan = "slow-rnn --architecture seed-rnn --balance smote --epochs 500\n"
    result, out = _run(tmp_path, plan, deadline=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "slow-rnn: stopped at the deadline" in result.stdout
    assert not list(out.glob("models-*.tar"))
    assert (out / "logs.tar.gz").is_file()


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
    # A name becomes a folder and a tar member; a repeated one would share them.
    for plan in ("-x --architecture seed-rnn\n", "a --epochs 1\na --epochs 2\n"):
        result, _ = _run(tmp_path, plan, deadline=60)
        assert result.returncode == 2
        assert "is repeated or not letters, digits" in result.stderr

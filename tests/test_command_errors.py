"""Mistakes an administrator can make end in one line and exit status 2, before anything slow.

Every test runs the real command as a process, as the administrator would, and none of them
loads a model: the checks must come first.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from reports.render import report_filename

CONFIG = ROOT / "config.toml"


def pneumotriage(
    *args: str, env: dict[str, str], cwd: Path = ROOT, config: Path | None = CONFIG
) -> subprocess.CompletedProcess[str]:
    """The command with only the given PNEUMOTRIAGE_ variables; a check that wrongly passes
    would start the service, so the timeout is short."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMOTRIAGE_")}
    options = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "pneumotriage", *options, *args],
        env={**environment, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit status 2 and a single `pneumotriage: ...` line holding every expected text."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pneumotriage: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    """Everything the service writes goes under tmp_path, never into the repository."""
    return {
        "PNEUMOTRIAGE_DICOM_BIND_ADDRESS": "127.0.0.1",
        "PNEUMOTRIAGE_DICOM_PORT": str(free_port()),
        "PNEUMOTRIAGE_WEB_PORT": str(free_port()),
        "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'db' / 'pneumotriage.db'}",
        "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(tmp_path / "storage"),
        "PNEUMOTRIAGE_REPORTS_DIRECTORY": str(tmp_path / "reports"),
    }


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n", encoding="utf-8")
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "node"])
def test_port_in_use(command: str, places: dict[str, str], busy_port: int) -> None:
    result = pneumotriage(command, env=places | {"PNEUMOTRIAGE_DICOM_PORT": str(busy_port)})
    one_line(result, f"dicom.port = {busy_port}", "already in use", "choose another port")


@pytest.mark.parametrize("command", ["serve", "node", "worker"])
def test_storage_that_is_a_file(command: str, places: dict[str, str], a_file: Path) -> None:
    result = pneumotriage(command, env=places | {"PNEUMOTRIAGE_STORAGE_DIRECTORY": str(a_file)})
    one_line(result, "storage.directory", str(a_file), "is a file")


def test_storage_that_cannot_be_created(places: dict[str, str], a_file: Path) -> None:
    storage = a_file / "storage"
    result = pneumotriage("node", env=places | {"PNEUMOTRIAGE_STORAGE_DIRECTORY": str(storage)})
    one_line(result, "storage.directory", str(storage), "cannot create or write it")


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_unknown_model_lists_the_shipped_ones(command: str, places: dict[str, str]) -> None:
    result = pneumotriage(command, env=places | {"PNEUMOTRIAGE_MODEL_NAME": "cnn-lstm"})
    one_line(result, 'model.name = "cnn-lstm"', "cnn-lstm-ensemble, seed-rnn")


def test_unsupported_database(places: dict[str, str]) -> None:
    url = "mysql://triage:s3cret@db.example/pneumotriage"
    result = pneumotriage("serve", env=places | {"PNEUMOTRIAGE_DATABASE_URL": url})
    line = one_line(result, "database.url", "mysql://triage:***@db.example", "postgresql")
    assert "s3cret" not in line


def test_sqlite_folder_that_cannot_be_created(places: dict[str, str], a_file: Path) -> None:
    url = f"sqlite:///{a_file / 'pneumotriage.db'}"
    result = pneumotriage("node", env=places | {"PNEUMOTRIAGE_DATABASE_URL": url})
    one_line(result, "database.url", str(a_file), "cannot create the folder")


def test_sqlite_folder_is_created_by_db_upgrade(places: dict[str, str], tmp_path: Path) -> None:
    result = pneumotriage("db", "upgrade", env=places)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "db" / "pneumotriage.db").is_file()


@pytest.mark.parametrize("command", ["history", "report", "drift"])
def test_query_on_a_missing_database_file(
    command: str, places: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / "db" / "pneumotriage.db"
    one_line(pneumotriage(command, env=places), str(database), "pneumotriage db upgrade")
    assert not database.exists() and not database.parent.exists()


@pytest.mark.parametrize("command", ["calibrate", "content-check"])
def test_a_fit_on_a_missing_model_names_the_shipped_ones(
    command: str, places: dict[str, str]
) -> None:
    one_line(
        pneumotriage(command, "--model", "no-such", env=places),
        "no model 'no-such'",
        "shipped models: cnn-lstm-ensemble, seed-rnn",
    )


def test_training_from_a_missing_model_names_the_shipped_ones(places: dict[str, str]) -> None:
    one_line(
        pneumotriage("train", "--architecture", "cnn-lstm", "--init-from", "no-such", env=places),
        "no model 'no-such'",
        "shipped models: cnn-lstm-ensemble, seed-rnn",
    )


def test_training_on_a_missing_data_folder_is_one_line(
    places: dict[str, str], tmp_path: Path
) -> None:
    """Found once the run starts, after the start-up line: the error still ends the output
    in one line."""
    missing = tmp_path / "no-such-data"
    result = pneumotriage("train", "--data", str(missing), "--out", str(tmp_path / "m"), env=places)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pneumotriage: {missing} needs the class folders NORMAL, PNEUMONIA")
    assert not (tmp_path / "m").exists()


def test_a_member_without_its_ensemble_is_explained(places: dict[str, str]) -> None:
    one_line(
        pneumotriage("train", "--member", "cnn-lstm-smote", env=places),
        "--member needs --init-from",
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ("--architecture", "cnn-lstm", "--augmentation", "wild"),
            "configuration has no [training.augmentations.wild]"
            " (there are: multiscale, standard, strong)",
        ),
        (("--augmentation", "strong"), "seed-rnn trains without augmentation"),
        (("--architecture", "cnn", "--mixup", "-0.2"), "--mixup is a Beta parameter"),
        (
            ("--architecture", "cnn", "--label-smoothing", "0.5"),
            "--label-smoothing is at least 0 and below 0.5, not 0.5",
        ),
    ],
)
def test_an_augmentation_or_mixup_train_cannot_use_is_one_line(
    places: dict[str, str], arguments: tuple[str, ...], message: str
) -> None:
    one_line(pneumotriage("train", *arguments, env=places), message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[dicom]\nae_title = "PT"\nprot = 104\n',
            ("dicom.prot = 104 ({config}, line 3)", 'did you mean "port"?'),
        ),
        (
            '[training]\naugmentation = "wild"\n',
            (
                "augmentation = 'wild' names no [training.augmentations] table",
                "(there are: multiscale, standard, strong)",
            ),
        ),
    ],
    ids=["misspelt-key", "augmentation-naming-no-table"],
)
def test_a_mistake_in_a_site_file_names_file_line_and_what_is_wrong(
    places: dict[str, str], tmp_path: Path, text: str, expected: tuple[str, ...]
) -> None:
    config = tmp_path / "site.toml"
    config.write_text(text, encoding="utf-8")
    one_line(
        pneumotriage("history", env=places, config=config),
        *(part.format(config=config) for part in expected),
    )


def test_misspelt_variable_gets_a_suggestion(places: dict[str, str]) -> None:
    result = pneumotriage("history", env=places | {"PNEUMOTRIAGE_DICOM_PROT": "104"})
    one_line(result, "PNEUMOTRIAGE_DICOM_PROT", "did you mean PNEUMOTRIAGE_DICOM_PORT?")


def test_named_configuration_file_missing_gives_its_absolute_path(
    places: dict[str, str], tmp_path: Path
) -> None:
    result = pneumotriage(
        "--config", "missing.toml", "history", env=places, cwd=tmp_path, config=None
    )
    one_line(result, f"configuration file not found: {tmp_path / 'missing.toml'}")


def test_embedded_defaults_without_a_configuration_file(tmp_path: Path) -> None:
    result = pneumotriage("db", "upgrade", env={}, cwd=tmp_path, config=None)
    assert result.returncode == 0, result.stderr
    assert "configuration: embedded defaults" in result.stderr
    assert (tmp_path / "var" / "pneumotriage.db").is_file()


def test_report_into_a_folder_uses_the_period_name(places: dict[str, str], tmp_path: Path) -> None:
    assert pneumotriage("db", "upgrade", env=places).returncode == 0
    folder = tmp_path / "out"
    folder.mkdir()
    since, until = "2026-11-20T06:00", "2026-11-21T06:00"
    result = pneumotriage(
        "report", "--since", since, "--until", until, "--out", str(folder), env=places
    )
    assert result.returncode == 0, result.stderr
    name = report_filename(
        datetime.fromisoformat(since).astimezone(), datetime.fromisoformat(until).astimezone()
    )
    assert result.stdout.strip() == str(folder / name)
    assert [p.name for p in folder.iterdir()] == [name]
    assert not list(tmp_path.rglob("*.part"))


def test_report_that_cannot_be_written_leaves_nothing(
    places: dict[str, str], tmp_path: Path
) -> None:
    assert pneumotriage("db", "upgrade", env=places).returncode == 0
    folder = tmp_path / "out"
    since, until = "2026-11-20T06:00", "2026-11-21T06:00"
    name = report_filename(
        datetime.fromisoformat(since).astimezone(), datetime.fromisoformat(until).astimezone()
    )
    (folder / name).mkdir(parents=True)
    result = pneumotriage(
        "report", "--since", since, "--until", until, "--out", str(folder), env=places
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pneumotriage: ")]
    assert errors == [f"pneumotriage: cannot write the report {folder / name}: Is a directory"]
    assert not list(tmp_path.rglob("*.part"))


def test_a_number_of_processes_out_of_range_is_refused(places: dict[str, str]) -> None:
    wrong = pneumotriage("serve", "--workers", "0", env=places)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "'0' is not a number of processes from 1 to 64" in wrong.stderr

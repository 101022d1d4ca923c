"""Configuration: defaults, environment overrides, and errors that name the key."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import time
from pathlib import Path

import pytest
from conftest import ROOT

from core.config import DEFAULT_CONFIG, PDU_BYTES_CAP, ConfigError, load_config, locate_config
from pneumotriage import preflight

CONFIG = ROOT / "config.toml"


def test_shipped_file_gives_the_embedded_defaults() -> None:
    config = load_config(CONFIG, environ={})
    assert config.dicom.ae_title == "PNEUMOTRIAGE" and config.dicom.port == 11112
    assert config.database.url == f"sqlite:///{ROOT / 'var' / 'pneumotriage.db'}"
    assert config.storage.directory == ROOT / "var" / "storage"
    assert config.model.name == "cnn-lstm-ensemble" and config.model.directory == ROOT / "models"
    assert config.worker.interval_seconds == 1
    assert config.reports.nightly_at == time(6, 0)


def test_environment_overrides_every_kind_of_key(tmp_path: Path) -> None:
    config = load_config(
        CONFIG,
        environ={
            "PNEUMOTRIAGE_DICOM_PORT": "11113",
            "PNEUMOTRIAGE_DATABASE_URL": "sqlite:///var/test.db",
            "PNEUMOTRIAGE_WORKER_INTERVAL_SECONDS": "1",
            "PNEUMOTRIAGE_DICOM_ALLOWED_CALLING_AES": "CR01, DX02",
            "PNEUMOTRIAGE_SELECTION_MODALITIES": '["CR"]',
            "PNEUMOTRIAGE_REPORTS_NIGHTLY_AT": "23:30",
            "PNEUMOTRIAGE_STORAGE_DIRECTORY": str(tmp_path),
        },
    )
    assert config.dicom.port == 11113
    assert config.database.url == f"sqlite:///{ROOT / 'var' / 'test.db'}"
    assert config.worker.interval_seconds == 1.0
    assert config.dicom.allowed_calling_aes == ["CR01", "DX02"]
    assert config.selection.modalities == ["CR"]
    assert config.reports.nightly_at == time(23, 30)
    assert config.storage.directory == tmp_path


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PNEUMOTRIAGE_DICOM_PORT", "70000", "dicom.port"),
        ("PNEUMOTRIAGE_DICOM_PORT", "eleven", "dicom.port"),
        ("PNEUMOTRIAGE_DICOM_AE_TITLE", "A_TITLE_LONGER_THAN_16", "dicom.ae_title"),
        ("PNEUMOTRIAGE_WORKER_INTERVAL_SECONDS", "0", "worker.interval_seconds"),
        ("PNEUMOTRIAGE_REPORTS_NIGHTLY_AT", "6 am", "reports.nightly_at"),
        ("PNEUMOTRIAGE_DATABASE_URL", "not a url", "database.url"),
        ("PNEUMOTRIAGE_LOGGING_LEVEL", "LOUD", "logging.level"),
        ("PNEUMOTRIAGE_DICOM_MAX_PDU_BYTES", "8388608", "dicom.max_pdu_bytes"),
    ],
)
def test_invalid_values_name_the_key_and_its_source(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(CONFIG, environ={variable: value})
    assert f"set by {variable}" in str(error.value)


def test_unlimited_pdu_length_is_served_as_the_hard_cap() -> None:
    """DICOM's 0 means "unlimited", but a received PDU is held in memory whole."""
    config = load_config(CONFIG, environ={"PNEUMOTRIAGE_DICOM_MAX_PDU_BYTES": "0"})
    assert config.dicom.announced_pdu_bytes == PDU_BYTES_CAP == 4 * 1024 * 1024
    assert load_config(CONFIG, environ={}).dicom.announced_pdu_bytes == 262144


def test_misspelt_variable_is_refused_with_the_closest_name() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(CONFIG, environ={"PNEUMOTRIAGE_WORKER_INTERVAL": "1"})
    assert str(error.value) == (
        "unknown configuration variable PNEUMOTRIAGE_WORKER_INTERVAL;"
        " did you mean PNEUMOTRIAGE_WORKER_INTERVAL_SECONDS?"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[dicom]\nprot = 104\n",
            'dicom.prot = 104 ({path}, line 2): unknown key; did you mean "port"?',
        ),
        (
            "[dicomm]\nport = 104\n",
            "[dicomm] ({path}, line 1): unknown section; did you mean [dicom]?",
        ),
        (
            '[dicom]\nae_title = "PT"\n\n[worker]\nbatch_size = 0\n',
            "worker.batch_size = 0 ({path}, line 5): must be at least 1",
        ),
        (
            '[dicom]\nport = "eleven"\n',
            'dicom.port = "eleven" ({path}, line 2): expected a whole number',
        ),
        ("dicom.port = 70000\n", "dicom.port = 70000 ({path}, line 1): must be at most 65535"),
        (
            '[worker]\ninterval_seconds = "soon"\n',
            'worker.interval_seconds = "soon" ({path}, line 2): expected a number',
        ),
        (
            '[dicom]\nallowed_calling_aes = "CR01"\n',
            'dicom.allowed_calling_aes = "CR01" ({path}, line 2):'
            ' expected a list, like ["CR", "DX"]',
        ),
        (
            '[reports]\nnightly_at = "6 am"\n',
            'reports.nightly_at = "6 am" ({path}, line 2):'
            " expected a local time as HH:MM, for example 06:00",
        ),
    ],
)
def test_file_mistakes_name_the_file_the_line_and_the_key_in_plain_words(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert str(error.value) == message.format(path=path)


def test_unsupported_database_is_a_configuration_error_without_the_password() -> None:
    url = "mysql://triage:s3cret@db.example/pneumotriage"
    with pytest.raises(ConfigError) as error:
        load_config(CONFIG, environ={"PNEUMOTRIAGE_DATABASE_URL": url})
    assert str(error.value).startswith(
        'database.url = "mysql://triage:***@db.example/pneumotriage"'
        " (set by PNEUMOTRIAGE_DATABASE_URL): unsupported database 'mysql'"
    )


def test_shipped_file_mirrors_the_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert load_config(None, environ={}) == load_config(CONFIG, environ={})


def test_embedded_defaults_work_outside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh folder with no config.toml: var/ is created there, the shipped model is found."""
    monkeypatch.chdir(tmp_path)
    assert locate_config(None) is None
    config = load_config(None, environ={})
    assert config.storage.directory == tmp_path / "var" / "storage"
    assert config.database.url == f"sqlite:///{tmp_path / 'var' / 'pneumotriage.db'}"
    assert config.model.directory == ROOT / "models"
    preflight.service(config, node=False, worker=True)
    assert (tmp_path / "var" / "storage").is_dir() and (tmp_path / "var" / "reports").is_dir()
    (tmp_path / DEFAULT_CONFIG).write_text("", encoding="utf-8")
    assert locate_config(None) == DEFAULT_CONFIG


def test_command_line_reports_bad_configuration_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pneumotriage", "--config", str(CONFIG), "history"],
        env={"PATH": "", "PNEUMOTRIAGE_DICOM_PORT": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "dicom.port" in result.stderr and "Traceback" not in result.stderr


def test_unusable_database_is_reported_without_traceback_or_password() -> None:
    url = "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/pneumotriage_no_such_database"
    result = subprocess.run(
        [sys.executable, "-m", "pneumotriage", "--config", str(CONFIG), "history"],
        env={"PATH": "", "PNEUMOTRIAGE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot use the database postgresql+psycopg://postgres:***@" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_queries_never_change_the_schema_and_say_how_to(tmp_path: Path) -> None:
    database = tmp_path / "new.db"
    sqlite3.connect(database).close()
    environment = {"PATH": "", "PNEUMOTRIAGE_DATABASE_URL": f"sqlite:///{database}"}
    for command in (["history"], ["report", "--out", str(tmp_path / "r.html")]):
        result = subprocess.run(
            [sys.executable, "-m", "pneumotriage", "--config", str(CONFIG), *command],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2 and "pneumotriage db upgrade" in result.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert not (tmp_path / "r.html").exists()


def test_a_site_augmentation_table_is_added_to_the_shipped_ones(tmp_path: Path) -> None:
    """A site file with one table of its own keeps the shipped ones ("standard", the default,
    and the experiments); the strengths it leaves out are the defaults'."""
    site = tmp_path / "site.toml"
    site.write_text(
        '[training]\naugmentation = "site"\n[training.augmentations.site]\nzoom_fraction = 0.2\n',
        encoding="utf-8",
    )
    training = load_config(site, environ={}).training
    assert sorted(training.augmentations) == ["multiscale", "site", "standard", "strong"]
    assert training.augmentations["site"].zoom_fraction == 0.2
    assert training.augmentations["site"].rotation_degrees == (
        training.augmentations["standard"].rotation_degrees
    )


def test_a_misspelt_key_inside_a_named_table_gets_that_tables_keys(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[training.augmentations.site]\nrotaton_degrees = 5.0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(site, environ={})
    assert str(caught.value) == (
        f"training.augmentations.site.rotaton_degrees = 5.0 ({site}, line 2): unknown key;"
        ' did you mean "rotation_degrees"?'
    )

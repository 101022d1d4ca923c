"""Service configuration: one TOML file, every key overridable from the environment.

A PACS administrator edits `config.toml`; containers and tests override single keys with
`PNEUMOTRIAGE_<SECTION>_<KEY>` variables. Everything is validated once at start so that a
typo stops the service with the key's name instead of surfacing as a failure at 3 a.m.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "PNEUMOTRIAGE_"
DEFAULT_CONFIG = Path("config.toml")

# Largest P-DATA PDU the node accepts: each association holds one received PDU in memory
# whole, so this bounds memory per association whatever max_pdu_bytes says.
PDU_BYTES_CAP = 4 * 1024 * 1024

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """Raised with a message naming every offending key, ready to show to an administrator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    """AE titles are at most 16 printable characters without backslash (PS3.5 VR AE)."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    return value.strip()


class DicomConfig(_Section):
    ae_title: str = "PNEUMOTRIAGE"
    bind_address: str = "0.0.0.0"  # noqa: S104 - modalities must reach the node
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    allowed_calling_aes: list[str] = Field(default_factory=list)
    check_called_ae_title: bool = True
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 16
    max_pending_connections: Annotated[int, Field(ge=1, le=1000)] = 128
    association_request_timeout_seconds: Annotated[float, Field(gt=0)] = 5
    max_pdu_bytes: Annotated[int, Field(ge=0, le=PDU_BYTES_CAP)] = 262144
    network_timeout_seconds: Annotated[float, Field(gt=0)] = 60
    acse_timeout_seconds: Annotated[float, Field(gt=0)] = 30
    dimse_timeout_seconds: Annotated[float, Field(gt=0)] = 60
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30

    @property
    def announced_pdu_bytes(self) -> int:
        """The maximum PDU length announced to peers and enforced on every received PDU.

        DICOM reads 0 as "unlimited", but a received PDU is held in memory whole, so the
        node never offers more than PDU_BYTES_CAP.
        """
        return self.max_pdu_bytes or PDU_BYTES_CAP

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _calling_aes(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class StorageConfig(_Section):
    directory: Path = Path("var/storage")


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/pneumotriage.db"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL ({exc})") from None
        return value


class ModelConfig(_Section):
    name: str = "cnn-lstm-ensemble"
    directory: Path = Path("models")


class WorkerConfig(_Section):
    interval_seconds: Annotated[float, Field(gt=0)] = 5
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    lease_seconds: Annotated[float, Field(gt=0)] = 300
    max_attempts: Annotated[int, Field(ge=1)] = 3
    thumbnail_pixels: Annotated[int, Field(ge=16, le=512)] = 128


class SelectionConfig(_Section):
    """Which received objects count as chest radiographs; everything else is turned away."""

    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "THORAX", "LUNG", "CXR"])
    description_keywords: list[str] = Field(
        default_factory=lambda: ["CHEST", "THORAX", "THORAC", "LUNG", "CXR", "PULMON", "THX"]
    )
    view_positions: list[str] = Field(default_factory=lambda: ["PA", "AP"])
    excluded_view_positions: list[str] = Field(
        default_factory=lambda: ["LL", "RL", "LAT", "LATERAL", "RLO", "LLO"]
    )
    secondary_capture_modalities: list[str] = Field(default_factory=lambda: ["OT", "SC"])
    excluded_presentation_intents: list[str] = Field(default_factory=lambda: ["FOR PROCESSING"])


class ReportsConfig(_Section):
    directory: Path = Path("var/reports")
    nightly_at: time = time(6, 0)
    period_hours: Annotated[float, Field(gt=0)] = 24

    @field_validator("nightly_at", mode="before")
    @classmethod
    def _hhmm(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError("expected a local time as HH:MM, for example 06:00")
        return value


class TrainingConfig(_Section):
    """Defaults for `pneumotriage train` and `evaluate`; the command line overrides them."""

    data_directory: Path = Path("../shared/data/kermany-224/train")
    input_size: Annotated[int, Field(ge=16, le=1024)] = 150
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 42
    target_sensitivity: Annotated[float, Field(gt=0, le=1)] = 0.97


class LoggingConfig(_Section):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        if value.upper() not in levels:
            raise ValueError(f"expected one of {', '.join(levels)}")
        return value.upper()


class Config(_Section):
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def _env_value(raw: str, annotation: Any) -> Any:
    """Lists come from the environment as JSON or comma-separated text; the rest as text."""
    if getattr(annotation, "__origin__", None) is list:
        text = raw.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _merge_environment(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply PNEUMOTRIAGE_<SECTION>_<KEY> overrides; return the variables that match no key."""
    known: set[str] = set()
    for section, field in Config.model_fields.items():
        section_model = field.annotation
        for key, key_field in section_model.model_fields.items():
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            known.add(name)
            if name in environ:
                value = _env_value(environ[name], key_field.annotation)
                data.setdefault(section, {})[key] = value
    return sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths mean relative to the config file, so the service runs from any directory."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    url = config.database.url
    sqlite_file = re.match(r"^(sqlite(?:\+\w+)?:///)(?!/)(?!:memory:)(.+)$", url)
    if sqlite_file:
        url = sqlite_file.group(1) + str(absolute(Path(sqlite_file.group(2))))
    return config.model_copy(
        update={
            "storage": config.storage.model_copy(
                update={"directory": absolute(config.storage.directory)}
            ),
            "database": config.database.model_copy(update={"url": url}),
            "model": config.model.model_copy(
                update={"directory": absolute(config.model.directory)}
            ),
            "reports": config.reports.model_copy(
                update={"directory": absolute(config.reports.directory)}
            ),
            "training": config.training.model_copy(
                update={"data_directory": absolute(config.training.data_directory)}
            ),
        }
    )


def _describe(error: ValidationError, environ: Mapping[str, str]) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        env_name = ENV_PREFIX + key.replace(".", "_").upper()
        source = f" (set by {env_name})" if env_name in environ else ""
        lines.append(f"{key}: {item['msg']}{source}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, validate and resolve paths, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    path = path or DEFAULT_CONFIG
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        unknown = _merge_environment(data, environ)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"an environment override is not valid JSON: {exc}") from None
    if unknown:
        raise ConfigError(f"unknown configuration variable(s): {', '.join(unknown)}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, environ)) from None
    return _resolve_paths(config, path.resolve().parent)

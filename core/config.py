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
from collections.abc import Callable, Mapping
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.config_errors import ENV_PREFIX, describe, env_name, shown, unknown_variables

DEFAULT_CONFIG = Path("config.toml")
# The models shipped with the package, so that the default model is found from any folder.
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
SUPPORTED_DATABASES = ("sqlite", "postgresql")

# Largest P-DATA PDU the node accepts: each association holds one received PDU in memory
# whole, so this bounds memory per association whatever max_pdu_bytes says.
PDU_BYTES_CAP = 4 * 1024 * 1024
# Beyond this Beta(alpha, alpha) puts nearly every blend at one half: noise, not mixup.
MAX_MIXUP = 10.0
# At 0.5 the targets are 0.75 and 0.25, halfway between the class and a coin toss: from there
# smoothing no longer regularises a two-class model, it blurs what it is taught, so 0.5
# itself is refused.
MAX_LABEL_SMOOTHING = 0.5

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """Raised with a message naming every offending key, ready to show to an administrator."""


# Of one kind on one machine (`serve --nodes`, `--workers`, `worker.processes`): more is a
# typing mistake rather than a plan.
MAX_PROCESSES = 64


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    """AE titles are at most 16 printable characters without backslash (PS3.5 VR AE)."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable characters, no backslash")
    return value.strip()


def _clock_time(value: Any) -> Any:
    """A local time of day as HH:MM; TOML's own time values pass as they are."""
    if isinstance(value, str) and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError("expected a local time as HH:MM, for example 06:00")
    return value


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
    # Several node processes on one host may then share `port` (SO_REUSEPORT), the kernel
    # spreading associations among them; `serve --nodes N` turns it on for its own.
    reuse_port: bool = False
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_ca_certificates: Path | None = None
    tls_require_client_certificate: bool = False
    tls_port: Annotated[int, Field(ge=0, le=65535)] = 0

    @property
    def tls(self) -> bool:
        """DICOM TLS is served once the node has a certificate."""
        return self.tls_certificate is not None

    @property
    def tls_listen_port(self) -> int:
        """Where TLS is served: its own port, or `port` itself, which then speaks only TLS."""
        return self.tls_port or self.port

    @property
    def plain_port(self) -> int | None:
        """Where unencrypted DICOM is served; None when TLS has taken over `port`."""
        return self.port if not self.tls or self.tls_port else None

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

    @model_validator(mode="after")
    def _tls_settings(self) -> DicomConfig:
        """A TLS setting without the node's certificate would silently serve plain DICOM."""
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together: set both or neither")
        if not self.tls and (
            self.tls_port or self.tls_ca_certificates or self.tls_require_client_certificate
        ):
            raise ValueError(
                "tls_port, tls_ca_certificates and tls_require_client_certificate need"
                " tls_certificate and tls_key, the node's own certificate"
            )
        if self.tls_require_client_certificate and self.tls_ca_certificates is None:
            raise ValueError(
                "tls_require_client_certificate needs tls_ca_certificates, the CA certificates"
                " that clients' certificates are checked against"
            )
        if self.tls_port == self.port:
            raise ValueError(
                f"tls_port = {self.tls_port} is also port; use 0 to serve only TLS on port,"
                " or another port to serve both"
            )
        return self


class StorageConfig(_Section):
    directory: Path = Path("var/storage")
    # Below this much free space stores are answered 0xA700, before the disk is full.
    min_free_mb: Annotated[int, Field(ge=0)] = 1024
    # Received files older than this many days are removed (0: kept for ever); results,
    # thumbnails, heatmaps and the published SR and Secondary Captures stay.
    keep_days: Annotated[int, Field(ge=0)] = 0
    purge_at: time = time(3, 0)

    @field_validator("purge_at", mode="before")
    @classmethod
    def _purge_at(cls, value: Any) -> Any:
        return _clock_time(value)


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/pneumotriage.db"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        """Only the databases the migrations are tested on; a driver that is not installed
        would otherwise surface as an import error deep inside SQLAlchemy."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        usage = "use sqlite:///PATH or postgresql+psycopg://USER@HOST:5432/NAME"
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL; {usage}") from None
        if url.get_backend_name() not in SUPPORTED_DATABASES:
            raise ValueError(f"unsupported database {url.get_backend_name()!r}; {usage}")
        try:
            url.get_dialect().import_dbapi()
        except (ImportError, NoSuchModuleError):
            raise ValueError(
                f"database driver {url.get_driver_name()!r} is not installed; {usage}"
            ) from None
        return value


class IdentityConfig(_Section):
    """What the node does with an instance that contradicts the patient identity on record.

    Modelled on dcm4chee-arc's "accept conflicting Patient ID": `reject` refuses it with a
    failure status and an Error Comment (the safe default: the sender keeps it and someone
    looks); `review` stores it under its own patient and shows it, and the instances it
    contradicts, as identity conflicts in `history` and the report.
    """

    conflict_policy: Literal["reject", "review"] = "reject"


class ModelConfig(_Section):
    name: str = "cnn-lstm-ensemble"
    directory: Path = SHIPPED_MODELS


class WorkerConfig(_Section):
    processes: Annotated[int, Field(ge=1, le=MAX_PROCESSES)] = 2
    interval_seconds: Annotated[float, Field(gt=0)] = 1
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    lease_seconds: Annotated[float, Field(gt=0)] = 300
    max_attempts: Annotated[int, Field(ge=1)] = 3
    outage_backoff_max_seconds: Annotated[float, Field(gt=0)] = 60
    thumbnail_pixels: Annotated[int, Field(ge=16, le=512)] = 128
    study_settle_seconds: Annotated[float, Field(ge=0)] = 120
    study_rule: Literal["max", "mean"] = "max"


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
        return _clock_time(value)


class DriftConfig(_Section):
    """The weekly check that this site's scores still look like validation's (core.drift)."""

    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    at: time = time(4, 0)
    days: Annotated[int, Field(ge=1, le=366)] = 7
    # A population stability index of 0.25 is the usual mark of a major shift.
    warn_psi: Annotated[float, Field(gt=0)] = 0.25
    # ...and only when a week drawn from the validation mixture would score as high this rarely.
    max_p_value: Annotated[float, Field(gt=0, le=1)] = 0.01
    min_results: Annotated[int, Field(ge=1)] = 200

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: Any) -> Any:
        return _clock_time(value)


class AugmentationConfig(_Section):
    """Strengths of the training augmentation (training/augment.py): each the half-width of
    a uniform range, except gamma_range, that of the log of the exponent, and noise, the top
    of the range its standard deviation is drawn from (from 0).

    These defaults are what every augmented model was trained with before cards recorded
    the strengths: a card without them is read as trained with these.
    """

    rotation_degrees: Annotated[float, Field(ge=0, le=45)] = 10.0
    shift_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.08
    zoom_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.15
    aspect_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.15
    gamma_range: Annotated[float, Field(ge=0, le=2)] = 0.6
    sharpness: Annotated[float, Field(ge=0, le=3)] = 1.0
    noise: Annotated[float, Field(ge=0, le=0.2)] = 0.03


def _shipped_augmentations() -> dict[str, AugmentationConfig]:
    return {
        "standard": AugmentationConfig(),
        # The wider experiment of docs/training.md.
        "strong": AugmentationConfig(
            rotation_degrees=15.0,
            shift_fraction=0.12,
            zoom_fraction=0.25,
            aspect_fraction=0.25,
            gamma_range=0.8,
            sharpness=1.5,
            noise=0.05,
        ),
        # Multi-scale training: standard's strengths with only the zoom widened.
        "multiscale": AugmentationConfig(zoom_fraction=0.3),
    }


class TrainingConfig(_Section):
    """Defaults for `pneumotriage train` and `evaluate`; the command line overrides them."""

    data_directory: Path = Path("../shared/data/kermany-224/train")
    input_size: Annotated[int, Field(ge=16, le=1024)] = 150
    validation_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 42
    target_sensitivity: Annotated[float, Field(gt=0, le=1)] = 0.97
    calibration_copies: Annotated[int, Field(ge=0, le=20)] = 3
    augmentation: str = "standard"
    augmentations: dict[str, AugmentationConfig] = Field(default_factory=_shipped_augmentations)
    mixup: Annotated[float, Field(ge=0, le=MAX_MIXUP)] = 0.0
    label_smoothing: Annotated[float, Field(ge=0, lt=MAX_LABEL_SMOOTHING)] = 0.0

    @field_validator("augmentations", mode="before")
    @classmethod
    def _over_the_shipped(cls, value: Any) -> Any:
        """A site's tables are added to the shipped ones, replacing any of the same name: a
        site file with one table of its own must not lose "standard", the default."""
        return {**_shipped_augmentations(), **value} if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _augmentation_named(self) -> TrainingConfig:
        if self.augmentation not in self.augmentations:
            raise ValueError(
                f"augmentation = {self.augmentation!r} names no [training.augmentations] table"
                f" (there are: {', '.join(sorted(self.augmentations))})"
            )
        return self


class Destination(_Section):
    """A DICOM peer, usually the PACS, that receives the triage results of each study."""

    ae_title: str
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    send: list[Literal["sr", "sc"]] = Field(default_factory=lambda: ["sr", "sc"])
    studies: Literal["all", "flagged"] = "all"
    tls: bool = False
    tls_ca_certificates: Path | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @model_validator(mode="after")
    def _tls_settings(self) -> Destination:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together: set both or neither")
        settings = (self.tls_ca_certificates, self.tls_certificate, self.tls_server_name)
        if not self.tls and any(value is not None for value in settings):
            raise ValueError("the tls_ settings of a destination need tls = true")
        return self

    @property
    def name(self) -> str:
        """How the outbox names the destination; stable across restarts."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def server_name(self) -> str:
        """The name its certificate must carry."""
        return self.tls_server_name or self.host


class ForwardConfig(_Section):
    """Results sent back into the study: a TID 1500 SR and Secondary Captures with the
    heatmap and a burned-in banner, through a durable outbox."""

    destinations: list[Destination] = Field(default_factory=list)
    secondary_capture: Literal["flagged", "all"] = "flagged"
    sc_pixels: Annotated[int, Field(ge=256, le=4096)] = 1024
    interval_seconds: Annotated[float, Field(gt=0)] = 5
    max_attempts: Annotated[int, Field(ge=1)] = 10
    retry_seconds: Annotated[float, Field(gt=0)] = 30
    retry_max_seconds: Annotated[float, Field(gt=0)] = 3600
    timeout_seconds: Annotated[float, Field(gt=0)] = 30


class WebConfig(_Section):
    """The web application for radiologists and administrators (`pneumotriage web`, and
    beside the node and the worker in `serve`)."""

    # Loopback by default: patient data reaches the network only when an administrator
    # chooses an address, ideally behind TLS (here or at a reverse proxy).
    bind_address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: list[str] = Field(default_factory=list)
    viewer_url_template: str = ""
    refresh_seconds: Annotated[float, Field(ge=1, le=300)] = 5
    page_size: Annotated[int, Field(ge=5, le=500)] = 50
    worklist_hours: Annotated[float, Field(gt=0)] = 24
    login_max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    login_window_minutes: Annotated[float, Field(gt=0)] = 15
    image_pixels: Annotated[int, Field(ge=256, le=4096)] = 1024
    max_upload_mb: Annotated[float, Field(gt=0, le=1024)] = 50

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer(cls, value: str) -> str:
        """Only the Study Instance UID may go into the link: names never go into URLs."""
        if not value:
            return value
        if not re.match(r"^https?://", value):
            raise ValueError("expected an http:// or https:// URL")
        fields = set(re.findall(r"{([^{}]*)}", value))
        if fields != {"study_instance_uid"}:
            raise ValueError("use {study_instance_uid}, and no other field, in the URL")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("tls_certificate and tls_key go together: set both or neither")
        return self


class LoggingConfig(_Section):
    level: str = "INFO"
    # "text" for people, "json" (one object per line) for a log collector.
    format: Literal["text", "json"] = "text"

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
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def _env_value(raw: str, annotation: Any) -> Any:
    """Lists come from the environment as JSON or comma-separated text; the rest as text."""
    if getattr(annotation, "__origin__", None) is list:
        text = raw.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _known_keys() -> dict[str, list[str]]:
    """The keys of every section, and of the tables inside one ("forward.destinations",
    "training.augmentations"), so that a misspelt key there is told its own table's keys."""
    known = {}
    for section, field in Config.model_fields.items():
        known[section] = list(field.annotation.model_fields)
        for key, key_field in field.annotation.model_fields.items():
            inner = [a for a in get_args(key_field.annotation) if isinstance(a, type)]
            tables = [a for a in inner if issubclass(a, BaseModel)]
            if tables:
                known[f"{section}.{key}"] = list(tables[-1].model_fields)
    return known


def _merge_environment(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply PNEUMOTRIAGE_<SECTION>_<KEY> overrides; return the variables that match no key."""
    known: set[str] = set()
    for section, field in Config.model_fields.items():
        for key, key_field in field.annotation.model_fields.items():
            name = env_name(section, key)
            known.add(name)
            if name not in environ:
                continue
            try:
                value = _env_value(environ[name], key_field.annotation)
            except json.JSONDecodeError:
                raise ConfigError(
                    f"{section}.{key} = {shown(environ[name])} (set by {name}): expected a"
                    ' JSON list like ["CR", "DX"] or comma-separated values like CR,DX'
                ) from None
            data.setdefault(section, {})[key] = value
    unknown = sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)
    return unknown_variables(unknown, known)


# The certificate files of a section, which are relative to the config file like any path.
_TLS_FILES = ("tls_certificate", "tls_key", "tls_ca_certificates")
_S = TypeVar("_S", bound=BaseModel)


def _absolute_tls_files(section: _S, absolute: Callable[[Path], Path]) -> _S:
    return section.model_copy(
        update={
            key: absolute(path)
            for key in _TLS_FILES
            if (path := getattr(section, key, None)) is not None
        }
    )


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths mean relative to the config file (or, with no file, to the current
    folder), so the service runs from any directory."""

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
            "dicom": _absolute_tls_files(config.dicom, absolute),
            "forward": config.forward.model_copy(
                update={
                    "destinations": [
                        _absolute_tls_files(d, absolute) for d in config.forward.destinations
                    ]
                }
            ),
            "web": _absolute_tls_files(config.web, absolute),
        }
    )


def locate_config(given: Path | None) -> Path | None:
    """The file named on the command line, else ./config.toml if there is one; None means
    the embedded defaults, so the command also works outside the repository."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path.resolve()}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read configuration file {path.resolve()}: {reason}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.resolve()} is not valid TOML: {exc}") from None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (None: the embedded defaults), override from the environment, validate
    and resolve paths, or raise ConfigError with one line per mistake."""
    environ = os.environ if environ is None else environ
    text, data = _read(path) if path is not None else ("", {})
    unknown = _merge_environment(data, environ)
    if unknown:
        raise ConfigError("\n".join(unknown))
    file = path.resolve() if path is not None else None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe(exc, file, text, environ, _known_keys()))) from None
    return _resolve_paths(config, file.parent if file is not None else Path.cwd())

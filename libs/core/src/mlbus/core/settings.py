"""Settings shared by every service, read once in ``main()`` and passed down.

Shared parts (Kafka, storage, telemetry, logging) have one env prefix each
(``MLBUS_KAFKA_``, ``MLBUS_STORAGE_``, ``MLBUS_TELEMETRY_``, ``MLBUS_LOG_``) so an
address such as the Kafka bootstrap servers is set once for the whole stack. Each
service subclasses :class:`ServiceSettings` with its own prefix (``REGISTRY_``,
``FEATURE_STORE_``, ...) for what is its alone (ports, database URL, ...).

Every default is the embedded setup that ``mlbus up`` and the tests run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".mlbus"


class KafkaSettings(BaseSettings):
    """How every service reaches the bus. Defaults suit the embedded broker (see KAFKA_BROKER.md)."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_KAFKA_", extra="ignore", use_attribute_docstrings=True
    )

    bootstrap_servers: str = "127.0.0.1:29092"
    """Comma-separated host:port list of Kafka brokers."""
    topic_namespace: str = ""
    """Prefix of every topic name (``<namespace>.mlbus....``), so stacks or tests can share a broker."""
    client_id_prefix: str = "mlbus"
    """Prefix of the Kafka client id; the service name is appended."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor for topics mlbus creates (1 on the embedded broker)."""
    create_topics: bool = True
    """Create the catalogue's topics at start-up when they are missing."""
    session_timeout_ms: int = Field(default=6000, ge=1000)
    """Consumer-group session timeout; 4-6 s keeps rebalances short on the embedded broker."""
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    """Consumer heartbeat interval; well under a third of the session timeout."""
    fetch_max_wait_ms: int = Field(default=20, ge=0)
    """Longest a fetch waits for data; small, because the embedded broker never wakes a long poll."""
    max_poll_records: int = Field(default=200, ge=1)
    """Most records a consumer takes per poll."""
    max_request_size: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest produce request in bytes (large payloads go to the object store instead)."""
    max_partition_fetch_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest fetch per partition in bytes; at least max_request_size."""
    acks: Literal["1", "all"] = "all"
    """Producer acknowledgements. Never 0: the embedded broker answers it and the client churns."""
    linger_ms: int = Field(default=5, ge=0)
    """How long the producer waits to fill a batch."""
    max_batch_size: int = Field(default=1024 * 1024, ge=1024)
    """Producer batch size in bytes."""
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    """Producer compression codec."""
    request_timeout_ms: int = Field(default=30000, ge=1000)
    """Client request timeout."""
    retry_attempts: int = Field(default=3, ge=0)
    """How many times a consumer retries a retryable handler error before dead-lettering."""
    retry_backoff_ms: int = Field(default=200, ge=0)
    """First retry delay; doubles per attempt."""
    startup_timeout_s: float = Field(default=30.0, gt=0)
    """How long a service waits for the broker at start-up before giving up."""


class StorageSettings(BaseSettings):
    """Where artifacts, large payloads and offline data live."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_STORAGE_", extra="ignore", use_attribute_docstrings=True
    )

    type: Literal["local", "s3"] = "local"
    """Object store implementation: a local directory or an S3-compatible store."""
    root: Path = DEFAULT_HOME / "objects"
    """Root directory of the local object store."""
    s3_bucket: str = "mlbus"
    """Bucket of the S3 object store."""
    s3_prefix: str = ""
    """Key prefix inside the bucket, for sharing one bucket between stacks."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store (MinIO, ...); None means AWS."""
    s3_region: str = "us-east-1"
    """Region of the S3 store."""
    s3_create_bucket: bool = True
    """Create the bucket at start-up when it is missing."""


class TelemetrySettings(BaseSettings):
    """Traces and metrics. Standard ``OTEL_*`` variables (endpoint, headers, ...) are left to the SDK."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_TELEMETRY_", extra="ignore", use_attribute_docstrings=True
    )

    traces_exporter: Literal["none", "console", "otlp"] = "none"
    """Where spans go: OTLP (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT), stderr (console), or nowhere (none: spans are not recorded, but the trace context a request brings still propagates to the services and topics it reaches)."""
    metrics_exporter: Literal["none", "prometheus", "console", "otlp"] = "prometheus"
    """Where metrics go; prometheus serves text on the service's metrics port."""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of new traces that are sampled (parent decisions are honoured)."""


class LogSettings(BaseSettings):
    """Logging for every service."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_LOG_", extra="ignore", use_attribute_docstrings=True
    )

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""
    format: Literal["json", "text"] = "json"
    """JSON lines (with trace and span ids) or human-readable text."""


class GrpcSettings(BaseSettings):
    """Limits and timings for gRPC servers and clients."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_GRPC_", extra="ignore", use_attribute_docstrings=True
    )

    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest gRPC message sent or received."""
    keepalive_time_ms: int = Field(default=30000, ge=1000)
    """Interval between keepalive pings on idle connections."""
    keepalive_timeout_ms: int = Field(default=10000, ge=1000)
    """How long to wait for a keepalive ack before closing the connection."""
    default_deadline_s: float = Field(default=30.0, gt=0)
    """Deadline given to client calls that did not set one."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """How long a stopping server lets in-flight calls finish."""


class ServiceSettings(BaseSettings):
    """Base of every service's settings; subclasses set the env prefix and service name."""

    model_config = SettingsConfigDict(
        env_prefix="MLBUS_", extra="ignore", use_attribute_docstrings=True
    )

    #: The service's canonical name (folder, compose service, OTEL_SERVICE_NAME).
    service_name: ClassVar[str] = "mlbus"

    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""
    grpc_port: int = Field(default=0, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
    port_file: Path | None = None
    """Once the gRPC server listens, its port is written to this file (atomically, as decimal text): how a supervisor that starts the service with grpc_port 0 learns the port the kernel chose."""
    home: Path = DEFAULT_HOME
    """Directory for this stack's local state (databases, logs)."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    """Bus connection (env prefix MLBUS_KAFKA_)."""
    storage: StorageSettings = Field(default_factory=StorageSettings)
    """Object store (env prefix MLBUS_STORAGE_)."""
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    """Traces and metrics (env prefix MLBUS_TELEMETRY_)."""
    log: LogSettings = Field(default_factory=LogSettings)
    """Logging (env prefix MLBUS_LOG_)."""
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    """gRPC limits and timings (env prefix MLBUS_GRPC_)."""


#: Nested settings that are shared by all services and documented once.
SHARED_SECTIONS: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    StorageSettings,
    TelemetrySettings,
    LogSettings,
    GrpcSettings,
)


def _env_name(cls: type[BaseSettings], name: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "(see section)"
    value: Any = info.default
    if isinstance(value, Path):
        value = str(value).replace(str(Path.home()), "~")
    return f"`{value!s}`" if value not in (None, "") else "—"


def settings_table(cls: type[BaseSettings], *, own_only: bool = False) -> str:
    """Render a Markdown table of a settings class: env variable, type, default, description.

    Service READMEs embed these tables; ``own_only`` leaves out the nested shared sections.
    """
    rows = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, info in cls.model_fields.items():
        if (
            own_only
            and isinstance(info.annotation, type)
            and issubclass(info.annotation, BaseSettings)
        ):
            continue
        annotation = info.annotation
        type_text = getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")
        doc = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{_env_name(cls, name)}` | {type_text} | {_default_text(info)} | {doc} |")
    return "\n".join(rows)


def shared_env(settings: ServiceSettings) -> dict[str, str]:
    """The shared sections of ``settings`` as environment variables (``MLBUS_KAFKA_...``),
    for a child process that must use the same bus, object store, telemetry, logging and
    gRPC settings as its parent (e.g. the workers the deployment controller starts)."""
    env: dict[str, str] = {}
    for section in (
        settings.kafka,
        settings.storage,
        settings.telemetry,
        settings.log,
        settings.grpc,
    ):
        for name in type(section).model_fields:
            value: Any = getattr(section, name)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (list, dict)):
                text = json.dumps(value)
            else:
                text = str(value)
            env[_env_name(type(section), name)] = text
    return env

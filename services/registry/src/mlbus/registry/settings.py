"""Settings of the registry service (env prefix ``REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings

MIB = 1024 * 1024


class RegistrySettings(ServiceSettings):
    """Everything the registry service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_")

    service_name: ClassVar[str] = "registry"

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

    database_url: str = ""
    """SQLAlchemy URL of the registry database: `postgresql+psycopg://user:password@host/db` (or `postgresql://...`), or `sqlite:///path` (the standard sqlite3 module; `sqlite+pysqlite://` and `sqlite+aiosqlite://` are read as the same). Empty: the SQLite file `<home>/registry.db`."""
    database_pool_size: int = Field(default=5, ge=1, le=100)
    """PostgreSQL: connections kept open (as many more may be opened under load). SQLite: connections kept open and the threads that run transactions on them (one thread hop per transaction)."""
    migrate_on_start: bool = True
    """Apply the database migrations (Alembic, to head) at start-up. Turn off when migrations run as a separate deploy step."""

    allow_self_approval: bool = False
    """Let the registrant of a model version approve it. Off: another approver must."""
    max_artifact_bytes: int = Field(default=2 * 1024 * MIB, ge=1024)
    """Largest model artifact accepted, in bytes (a single-file ONNX model is at most 2 GiB)."""
    staging_dir: Path | None = None
    """Directory where uploads wait while they are hashed and validated, before they enter the object store. Empty: `<home>/registry-staging`. Needs room for the largest concurrent uploads."""
    chunk_size: int = Field(default=MIB, ge=4096, le=16 * MIB)
    """Size of the chunks DownloadArtifact streams and uploads are staged in, in bytes."""
    onnx_external_threshold: int = Field(default=64 * 1024, ge=1024)
    """Initializers at least this large (bytes) are checked in place instead of being loaded, so validating a model needs memory for its graph, not its weights."""

    default_page_size: int = Field(default=50, ge=1)
    """Page size of list calls that do not ask for one."""
    max_page_size: int = Field(default=1000, ge=1)
    """Largest page a list call gets; larger requests are cut to it."""
    write_attempts: int = Field(default=4, ge=1, le=20)
    """How often a change that collided with a concurrent one (deadlock, lost race) is tried before UNAVAILABLE."""

    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    """How often the outbox relay looks for unsent events when no commit of this process woke it (events of other replicas)."""
    outbox_batch_size: int = Field(default=200, ge=1, le=10000)
    """Most events the relay reads and publishes per round."""
    outbox_send_timeout_s: float = Field(default=10.0, ge=1.0)
    """How long the relay waits for the broker to acknowledge an event before it backs off and retries."""
    outbox_backoff_initial_s: float = Field(default=0.5, gt=0)
    """First pause after a failed relay attempt; doubles per failure up to the maximum."""
    outbox_backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest pause between relay attempts while the broker is unreachable."""
    outbox_verify_topics: bool = True
    """Check before each relay round that the registry topics exist and recreate missing ones (the embedded broker loses every topic when it restarts). Off: checked only after connecting."""
    outbox_retention_hours: float = Field(default=168.0, ge=0)
    """How long relayed events stay in the outbox table before they are purged; 0 keeps them."""
    outbox_drain_timeout_s: float = Field(default=5.0, ge=0)
    """At shutdown, how long the relay may go on publishing pending events."""

    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file under ``home`` when it is empty."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').expanduser().resolve()}"

    def resolved_staging_dir(self) -> Path:
        """``staging_dir``, or ``<home>/registry-staging``."""
        return (self.staging_dir or self.home / "registry-staging").expanduser().resolve()

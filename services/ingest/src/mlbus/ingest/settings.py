"""Settings of the ingest service (env prefix ``INGEST_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    """Everything the ingest service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="INGEST_")

    service_name: ClassVar[str] = "ingest"

    grpc_port: int = Field(default=50055, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9105, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

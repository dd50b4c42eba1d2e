"""Settings of the registry service (env prefix ``REGISTRY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    """Everything the registry service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_")

    service_name: ClassVar[str] = "registry"

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

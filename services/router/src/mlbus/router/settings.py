"""Settings of the router service (env prefix ``ROUTER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Everything the router service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_")

    service_name: ClassVar[str] = "router"

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
